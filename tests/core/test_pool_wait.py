"""``PoolCore.wait``: readiness decided in the core, with a fake clock.

A readiness waiter (``PoolHandle.wait()``, psycopg_pool's ``ConnectionPool.wait()``)
is answered ``Filled`` by the first call that finds the pool holding ``min_size``
resources (idle, checking or leased), or failed at its deadline with AcquireTimeout
whose ``__cause__`` is the factory's last error; the pool keeps making resources
either way. The hand-driven tests show each case; the state machine checks the rule
over random runs, and deliberately broken cores (mutants) show that it would notice.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lessor.core.decisions import Filled
from lessor.core.pool import Create, Decision, Destroy, Fail, Grant, PoolCore
from lessor.core.pool.readiness import Readiness
from lessor.errors import AcquireTimeout, BreakerOpen, PoolClosed, ShuttingDown
from lessor.factory import TokenFactory
from lessor.holder import Holder
from lessor.protocol.messages import Lease
from lessor.specs import PoolSpec
from tests.support.mutants import assert_catches, assert_passes
from tests.support.pool_core import Pool, of

H = Holder.thread(1, 1, 1)


def pool(**kw: Any) -> Pool:
    return Pool(**{"max_size": 3, **kw})


def core(**kw: Any) -> PoolCore:
    """A core whose creations are not carried out: the test feeds their outcome back."""
    spec = PoolSpec("p", TokenFactory(), **{"max_size": 3, "max_idle": None, "max_lifetime": None,
                                            "create_backoff": 0.5, "create_backoff_max": 2.0,
                                            **kw})  # fmt: skip
    made = PoolCore(spec, epoch="e", rng=random.Random(3))
    assert len(of(made.start(0.0), Create)) == spec.min_size
    return made


# -- answered when the pool holds min_size ---------------------------------------------


def test_a_pool_without_min_size_is_ready_at_once() -> None:
    p = pool(min_size=0)
    assert p.core.wait(0.0, "w", 5.0) == [Filled("w", 0)]


def test_a_pool_already_at_min_size_is_ready_at_once() -> None:
    p = pool(min_size=2)  # the helper made both at start
    assert p.core.wait(1.0, "w", 5.0) == [Filled("w", 2)]


def test_leased_resources_count_towards_min_size() -> None:
    p = pool(min_size=2, max_size=2)
    p.lease(0.0, "a", H)
    p.lease(0.0, "b", H)
    assert p.core.idle == 0
    assert p.core.wait(1.0, "w", 5.0) == [Filled("w", 2)]


def test_waiters_are_answered_by_the_creation_that_reaches_min_size() -> None:
    c = core(min_size=2)
    assert c.wait(0.0, "w1", 5.0) == []
    assert c.wait(0.1, "w2", 5.0) == []
    first = c.created(0.2, "r0")
    assert of(first, Filled) == []  # one of two: not yet
    second = c.created(0.3, "r1")
    assert of(second, Filled) == [Filled("w1", 2), Filled("w2", 2)]
    assert c.tick(10.0) == []  # answered once: their deadlines are gone


def test_a_cancelled_wait_is_dropped_not_kept_till_its_deadline() -> None:
    c = core(min_size=1)
    assert c.wait(0.0, "gone", 5.0) == []
    assert c.wait(0.0, "kept", 5.0) == []
    c.cancel(0.1, "gone")  # its caller gave up (Ctrl-C, a cancelled reply)
    assert of(c.created(0.2, "r0"), Filled) == [Filled("kept", 1)]
    assert c.wait(0.3, "gone", 5.0) == [Filled("gone", 1)]  # the ticket is free again


def test_a_failing_factory_fails_the_wait_at_its_deadline_naming_the_error() -> None:
    c = core(min_size=1)
    assert c.wait(0.0, "w", 2.0) == []
    assert c.take_alarm() == 2.0  # the owner's timer wakes for the deadline
    c.create_failed(0.1, ConnectionRefusedError("first"))
    assert c.next_deadline() is not None and c.next_deadline() <= 2.0  # type: ignore[operator]
    probe = c.tick(1.9)  # still retrying: the backoff's probe
    assert of(probe, Fail) == [] and of(probe, Create) == [Create()]
    refused = ConnectionRefusedError("connection refused")  # the latest is named
    c.create_failed(1.95, refused)
    (fail,) = of(c.tick(2.0), Fail)
    assert fail.ticket == "w"
    assert isinstance(fail.error, AcquireTimeout)
    assert fail.error.__cause__ is refused
    assert "holds 0 of its min_size 1 resources after 2s" in str(fail.error)
    assert "ConnectionRefusedError: connection refused" in str(fail.error)
    # the pool is not given up on: it still retries, and a later wait succeeds
    assert c.next_deadline() is not None
    assert c.wait(2.0, "again", 5.0) == []
    more = c.tick(4.0)  # the backoff's next probe
    assert of(more, Create) == [Create()]
    assert of(c.created(4.1, "r0"), Filled) == [Filled("again", 1)]


def test_a_slow_factory_times_out_without_a_cause() -> None:
    c = core(min_size=1)
    c.wait(0.0, "w", 1.0)
    (fail,) = of(c.tick(1.0), Fail)
    assert isinstance(fail.error, AcquireTimeout) and fail.error.__cause__ is None


def test_a_success_clears_the_cause() -> None:
    c = core(min_size=2, max_size=2)
    c.create_failed(0.0, OSError("once"))
    c.created(0.1, "r0")  # one succeeded: the factory works again
    c.wait(0.2, "w", 1.0)
    (fail,) = of(c.tick(1.2), Fail)
    assert fail.error.__cause__ is None


def test_a_resource_lost_below_min_size_is_made_again_for_the_waiter() -> None:
    p = pool(min_size=1, max_size=1)
    lease = p.lease(0.0, "a", H)
    out = p.core.release(1.0, lease.id, H, broken=True)
    assert of(out, Destroy) and of(out, Create) == [Create()]
    assert p.core.wait(1.0, "w", 5.0) == []
    assert of(p.core.created(1.5, "fresh"), Filled) == [Filled("w", 1)]


# -- refused or failed with the pool ---------------------------------------------------


def test_a_closed_or_draining_pool_refuses_a_wait() -> None:
    c = core(min_size=1)
    c.stop_admitting()
    with pytest.raises(ShuttingDown):
        c.wait(0.0, "w", 1.0)
    c.close(0.0)
    with pytest.raises(PoolClosed):
        c.wait(0.0, "w", 1.0)


def test_waiters_fail_when_the_pool_closes_or_drains() -> None:
    c = core(min_size=1)
    c.wait(0.0, "w1", 5.0)
    (fail,) = of(c.begin_drain(0.1, ShuttingDown("down")), Fail)
    assert fail.ticket == "w1" and isinstance(fail.error, ShuttingDown)
    c2 = core(min_size=1)
    c2.wait(0.0, "w2", 5.0)
    (fail,) = of(c2.close(0.1), Fail)
    assert fail.ticket == "w2" and isinstance(fail.error, PoolClosed)
    assert c2.tick(10.0) == []  # answered once


def test_an_open_breaker_refuses_and_fails_waiters() -> None:
    c = core(min_size=1)
    c.wait(0.0, "w", 5.0)
    (fail,) = of(c.gate(0.1, "db", "open", 3.0), Fail)
    assert fail.ticket == "w" and isinstance(fail.error, BreakerOpen)
    with pytest.raises(BreakerOpen):
        c.wait(0.2, "again", 5.0)


def test_a_ticket_waits_once() -> None:
    c = core(min_size=1)
    c.wait(0.0, "w", 5.0)
    with pytest.raises(ValueError, match="already waiting"):
        c.wait(0.0, "w", 5.0)


# -- the rule over random runs ---------------------------------------------------------


class ReadinessMachine(RuleBasedStateMachine):
    """The owner of a core with readiness waiters, acquirers and a flaky factory.

    The clock moves only with ``tick`` (the owner's timer). After every step: each
    waiter was answered at most once; ``Filled`` only when the pool holds at least
    ``min_size``, with its size; a failure only at or past the deadline, while below
    ``min_size``, with the factory's last error as its cause; and no waiter is left
    unanswered while the pool holds ``min_size``, or past its deadline.
    """

    CORE: ClassVar[type[PoolCore]] = PoolCore

    @initialize(min_size=st.integers(0, 3), extra=st.integers(0, 2))
    def start(self, min_size: int, extra: int) -> None:
        spec = PoolSpec("p", TokenFactory(), min_size=min_size, max_size=max(1, min_size + extra),
                        max_idle=None, max_lifetime=None, create_backoff=0.3,
                        create_backoff_max=1.0)  # fmt: skip
        self.core = self.CORE(spec, epoch="e", rng=random.Random(0))
        self.min_size = min_size
        self.now = 0.0
        self.pending = 0
        self.names = itertools.count()
        self.waiting: dict[str, float] = {}  # readiness ticket -> deadline
        self.answered: set[str] = set()
        self.leases: list[Lease] = []
        self.last_error: BaseException | None = None
        self.apply(self.core.start(self.now))

    def apply(self, out: list[Decision]) -> None:
        for d in out:
            if isinstance(d, Create):
                self.pending += 1
            elif isinstance(d, Grant):
                self.leases.append(d.lease)
            elif isinstance(d, Filled):
                self.answer(d.ticket)
                assert d.size == self.core.size >= self.min_size, (d, self.core.size)
                assert self.now <= self.waiting[d.ticket]
            elif isinstance(d, Fail) and d.ticket in self.waiting:
                self.answer(d.ticket)
                assert self.now >= self.waiting[d.ticket], "failed before its deadline"
                assert self.core.size < self.min_size, "failed while at min_size"
                assert isinstance(d.error, AcquireTimeout)
                assert d.error.__cause__ is self.last_error, "not the factory's last error"

    def answer(self, ticket: object) -> None:
        assert isinstance(ticket, str) and ticket in self.waiting, ticket
        assert ticket not in self.answered, f"{ticket} answered twice"
        self.answered.add(ticket)

    @rule(timeout=st.floats(0.05, 3.0))
    def wait(self, timeout: float) -> None:
        ticket = f"w{next(self.names)}"
        self.waiting[ticket] = self.now + timeout
        self.apply(self.core.wait(self.now, ticket, timeout))

    @precondition(lambda self: self.pending > 0)
    @rule()
    def create_succeeds(self) -> None:
        self.pending -= 1
        self.last_error = None
        self.apply(self.core.created(self.now, f"r{next(self.names)}"))

    @precondition(lambda self: self.pending > 0)
    @rule()
    def create_fails(self) -> None:
        self.pending -= 1
        self.last_error = OSError(f"down {next(self.names)}")
        self.apply(self.core.create_failed(self.now, self.last_error))

    @rule(dt=st.floats(0.01, 2.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.apply(self.core.tick(self.now))

    @rule(timeout=st.floats(0.05, 3.0))
    def acquire(self, timeout: float) -> None:
        self.apply(self.core.acquire(self.now, f"a{next(self.names)}", H, timeout=timeout))

    @precondition(lambda self: bool(self.leases))
    @rule(broken=st.booleans())
    def release(self, broken: bool) -> None:
        lease = self.leases.pop(0)
        self.apply(self.core.release(self.now, lease.id, lease.holder, broken))

    @invariant()
    def nobody_waits_in_vain(self) -> None:
        open_ = {t: d for t, d in self.waiting.items() if t not in self.answered}
        if not hasattr(self, "core") or not open_:
            return
        assert self.core.size < self.min_size, "a waiter left waiting at min_size"
        assert min(open_.values()) > self.now, "a waiter left waiting past its deadline"
        due = self.core.next_deadline()
        assert due is not None and due <= min(open_.values()), "no wake-up for a deadline"


class AnswersOnlyOnChanges(PoolCore):
    """Mutant: a wait is queued but never checked at once (the pool is full already)."""

    def wait(self, now: float, ticket: object, timeout: float) -> list[Decision]:
        self._ready.add(now, ticket, timeout)
        return []


class FillsOneEarly(PoolCore):
    """Mutant: answers when one resource is still missing."""

    def _settle(self, now: float, out: list[Decision]) -> None:
        super()._settle(now, out)
        if self._ready.waiters and len(self._slots) + 1 >= self.spec.min_size:
            self._ready.fill(len(self._slots), out)


class _NoWakeUp(Readiness):
    def next_deadline(self) -> float | None:
        return None


class ForgetsToWake(PoolCore):
    """Mutant: the owner is never told when a wait's deadline comes."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._ready = _NoWakeUp()


class LosesTheCause(PoolCore):
    """Mutant: a wait that times out says nothing of the factory's error."""

    def _not_ready(self, timeout: float) -> AcquireTimeout:
        return AcquireTimeout(f"not ready after {timeout}s")


@pytest.mark.parametrize(
    ("mutant", "pattern"),
    [
        (AnswersOnlyOnChanges, "left waiting at min_size"),
        (FillsOneEarly, r"Filled\(ticket="),
        (ForgetsToWake, "no wake-up"),
        (LosesTheCause, "last error"),
    ],
)
def test_the_readiness_machine_catches_broken_cores(mutant: type[PoolCore], pattern: str) -> None:
    assert_catches(ReadinessMachine, mutant, pattern)


def test_the_real_core_passes_the_mutant_runs() -> None:
    assert_passes(ReadinessMachine, 300)
