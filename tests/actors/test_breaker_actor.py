"""Circuit breakers in one process: the Breaker handle over its supervised BreakerActor.

Every test goes through ``runtime.add_breaker`` and the handle it returns, with real
threads; the cross-process behaviour is in tests/e2e/test_breaker_workers.py.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lessor.actors.breaker as breaker_actor
from lessor import Runtime
from lessor.actors.base import actor_of
from lessor.core.breaker import BreakerCore, Decision
from lessor.errors import BreakerOpen, LessorError, NoSuchBreaker
from lessor.handles.breaker import Breaker
from lessor.protocol.messages import BreakerStats, ForceBreaker
from lessor.specs import BreakerSpec
from tests.support.helpers import in_thread, wait_until

STATE_BOUND = 5.0  # seconds to wait for a state the actor decides (measured: ~2 ms)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(max_restarts=10, handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


def spec(**overrides: Any) -> BreakerSpec:
    """A breaker that judges every 4 calls and stays open a minute unless told otherwise."""
    settings: dict[str, Any] = {
        "window_size": 4,
        "minimum_calls": 4,
        "failure_rate_threshold": 50.0,
        "open_duration": 60.0,
        "half_open_calls": 2,
    }
    return BreakerSpec("api", **{**settings, **overrides})


class Down(Exception):
    """The guarded dependency failed."""


def down() -> None:
    raise Down("dependency down")


def guard(way: str, breaker: Breaker, fn: Callable[[], Any]) -> Any:
    """``fn()`` through the breaker, one of the three ways the handle offers."""
    if way == "call":
        return breaker.call(fn)
    if way == "decorator":
        return breaker(fn)()
    with breaker:
        return fn()


def trip(breaker: Breaker, failures: int = 4) -> None:
    for _ in range(failures):
        with pytest.raises(Down):
            breaker.call(down)
    assert wait_until(lambda: breaker.state == "open", timeout=STATE_BOUND), breaker.stats()


def half_open(breaker: Breaker) -> None:
    assert wait_until(lambda: breaker.state == "half_open", timeout=STATE_BOUND), breaker.stats()


def crash(breaker: Breaker) -> None:
    """Make the breaker's actor fail as a bug would (a non-lessor error in a turn)."""
    actor = actor_of(breaker._route.actor_ref)  # type: ignore[attr-defined]
    assert actor is not None
    handle_internal = actor.handle_internal
    bug = object()

    def buggy(message: Any) -> Any:  # this incarnation only; the next one is a new object
        if message is bug:
            raise RuntimeError("breaker bug")
        return handle_internal(message)

    actor.handle_internal = buggy  # type: ignore[method-assign]
    actor.deliver_internal(bug)


# -- counting and tripping -------------------------------------------------------------


@pytest.mark.parametrize("way", ["call", "decorator", "with"])
def test_every_way_of_guarding_counts_outcomes_and_trips(runtime: Runtime, way: str) -> None:
    breaker = runtime.add_breaker(spec())
    ran: list[str] = []

    def ok() -> str:
        ran.append("ok")
        return "fine"

    def bad() -> None:
        ran.append("bad")
        down()

    assert guard(way, breaker, ok) == "fine"
    assert guard(way, breaker, ok) == "fine"
    with pytest.raises(Down, match="dependency down"):  # the caller's own error, unchanged
        guard(way, breaker, bad)
    stats = breaker.stats()
    assert (stats.state, stats.calls, stats.failures, stats.window_calls) == ("closed", 3, 1, 3)
    with pytest.raises(Down):
        guard(way, breaker, bad)  # 2 of 4 failed: 50%, the threshold
    assert wait_until(lambda: breaker.state == "open", timeout=STATE_BOUND)
    with pytest.raises(BreakerOpen):
        guard(way, breaker, ok)
    assert ran == ["ok", "ok", "bad", "bad"]  # the refused call never ran
    stats = breaker.stats()
    assert (stats.state, stats.calls, stats.failures, stats.trips, stats.rejected) == (
        "open", 4, 2, 1, 1
    )  # fmt: skip


def test_the_decorator_keeps_the_function_and_its_arguments(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec())

    @breaker
    def scale(x: int, *, by: int = 2) -> int:
        """Multiply."""
        return x * by

    assert (scale(3), scale(3, by=5)) == (6, 15)
    assert (scale.__name__, scale.__doc__) == ("scale", "Multiply.")
    assert breaker.stats().calls == 2


def test_breaker_open_names_the_breaker_and_the_time_left(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec(open_duration=30.0))
    trip(breaker)
    with pytest.raises(BreakerOpen) as refused:
        breaker.call(lambda: None)
    err = refused.value
    assert isinstance(err, LessorError)
    assert err.breaker == "api"
    assert err.remaining is not None and 0 < err.remaining <= 30.0
    assert "'api'" in str(err) and "open for" in str(err)


def test_listeners_hear_every_change_and_every_refusal(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec(open_duration=0.2, half_open_calls=1))
    changes: list[tuple[str, str, str]] = []
    refusals: list[tuple[str, BreakerOpen]] = []

    def broken_listener(*_: Any) -> None:
        raise RuntimeError("a listener's bug")  # logged; the others still hear

    breaker.on_state_change(broken_listener)
    breaker.on_state_change(lambda *change: changes.append(change))
    breaker.on_rejected(broken_listener)
    breaker.on_rejected(lambda name, err: refusals.append((name, err)))
    trip(breaker)
    with pytest.raises(BreakerOpen) as refused:
        breaker.call(lambda: None)
    assert refusals == [("api", refused.value)]  # the very error the caller got
    half_open(breaker)
    assert breaker.call(lambda: "probe") == "probe"  # the one probe succeeds: closed
    assert wait_until(lambda: len(changes) == 3, timeout=STATE_BOUND), changes
    assert changes == [
        ("api", "closed", "open"), ("api", "open", "half_open"), ("api", "half_open", "closed")
    ]  # fmt: skip
    assert len(refusals) == 1


# -- what counts -----------------------------------------------------------------------


class Fatal(Exception):
    pass


class Harmless(Exception):
    pass


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, Fatal)


def is_harmless(exc: BaseException) -> bool:
    return isinstance(exc, Harmless)


@pytest.mark.parametrize(
    "filters",
    [
        {"record_errors": (Fatal,), "ignore_errors": (Harmless,)},
        {"record_errors": is_fatal, "ignore_errors": is_harmless},
    ],
    ids=["types", "predicates"],
)
def test_ignored_errors_do_not_count_and_unlisted_ones_are_successes(
    runtime: Runtime, filters: dict[str, Any]
) -> None:
    breaker = runtime.add_breaker(spec(**filters))

    def raising(exc: BaseException) -> Callable[[], None]:
        def fn() -> None:
            raise exc

        return fn

    for _ in range(6):
        with pytest.raises(Harmless):
            breaker.call(raising(Harmless()))
    with pytest.raises(KeyboardInterrupt):  # not an Exception: always ignored
        breaker.call(raising(KeyboardInterrupt()))
    stats = breaker.stats()
    assert (stats.calls, stats.failures, stats.ignored, stats.window_calls) == (0, 0, 7, 0)
    for _ in range(4):
        with pytest.raises(ValueError):  # neither recorded nor ignored: a success
            breaker.call(raising(ValueError("unlisted")))
    stats = breaker.stats()
    assert (stats.state, stats.calls, stats.failures, stats.failure_rate) == (
        "closed", 4, 0, 0.0
    )  # fmt: skip
    for _ in range(4):
        with pytest.raises(Fatal):
            breaker.call(raising(Fatal()))
    assert wait_until(lambda: breaker.state == "open", timeout=STATE_BOUND)
    stats = breaker.stats()
    assert (stats.calls, stats.failures, stats.ignored, stats.trips) == (8, 4, 7, 1)


def test_slow_calls_trip_the_breaker_by_slow_call_rate(runtime: Runtime) -> None:
    slow = 0.05
    breaker = runtime.add_breaker(
        spec(slow_call_duration=slow, slow_call_rate_threshold=50.0, failure_rate_threshold=100.0)
    )

    def crawl() -> str:
        time.sleep(slow * 1.2)  # the call itself is slow (not synchronisation)
        return "late"

    for _ in range(4):
        assert breaker.call(lambda: "quick") == "quick"
    stats = breaker.stats()
    assert (stats.state, stats.slow_calls, stats.slow_call_rate) == ("closed", 0, 0.0)
    assert breaker.call(crawl) == "late"  # a success, but slow
    assert breaker.stats().state == "closed"  # 1 of the last 4 slow: 25%
    assert breaker.call(crawl) == "late"  # 2 of 4: 50%
    assert wait_until(lambda: breaker.state == "open", timeout=STATE_BOUND)
    stats = breaker.stats()
    assert (stats.calls, stats.failures, stats.slow_calls, stats.trips) == (6, 0, 2, 1)


# -- half-open -------------------------------------------------------------------------


def run_probes(breaker: Breaker, callers: int = 16) -> tuple[int, list[Any]]:
    """``callers`` threads call at once through a half-open breaker; every probe that
    runs blocks until all callers were either let in or refused.

    Returns how many probes ran at the same time, and each caller's result or error.
    """
    start = threading.Barrier(callers)
    release = threading.Event()
    lock = threading.Lock()
    running = [0]

    def probe() -> str:
        with lock:
            running[0] += 1
        release.wait(30)
        return "ok"

    def caller() -> Any:
        start.wait(10)
        return breaker.call(probe)

    threads = [in_thread(caller) for _ in range(callers)]
    try:
        settled = wait_until(
            lambda: running[0] + sum(not t.is_alive() for t, _ in threads) == callers,
            timeout=10,
        )  # every caller is inside a probe (blocked) or has been refused (done)
        ran = running[0]
    finally:
        release.set()
        for thread, _ in threads:
            thread.join(10)
    assert settled, f"{running[0]} probes running, callers stuck"
    return ran, [out[0] for _, out in threads]


def test_half_open_lets_exactly_half_open_calls_probes_run(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec(open_duration=0.1, half_open_calls=2))
    trip(breaker)
    half_open(breaker)
    ran, results = run_probes(breaker, callers=16)
    assert ran == 2
    assert results.count("ok") == 2
    refused = [r for r in results if isinstance(r, BreakerOpen)]
    assert len(refused) == 14
    assert all(r.breaker == "api" and r.remaining is None for r in refused)
    assert wait_until(lambda: breaker.state == "closed", timeout=STATE_BOUND)  # both succeeded
    stats = breaker.stats()
    assert (stats.probes, stats.probes_out, stats.rejected, stats.calls) == (2, 0, 14, 6)


class NoProbeLimit(BreakerCore):
    """A mutant core: half-open grants a permit to every caller."""

    def probe(self, now: float, ticket: object, holder: str) -> list[Decision]:
        limit = self.settings
        self.settings = dataclasses.replace(limit, half_open_calls=1_000_000)
        try:
            return super().probe(now, ticket, holder)
        finally:
            self.settings = limit


def test_the_probe_count_catches_a_core_that_ignores_the_limit(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(breaker_actor, "BreakerCore", NoProbeLimit)
    breaker = runtime.add_breaker(spec(open_duration=0.1, half_open_calls=2))
    assert type(actor_of(breaker._route.actor_ref).core) is NoProbeLimit  # type: ignore[attr-defined,union-attr]
    trip(breaker)
    half_open(breaker)
    ran, results = run_probes(breaker, callers=16)
    assert ran == 16  # what test_half_open_lets_exactly_half_open_calls_probes_run rules out
    assert results.count("ok") == 16


def test_a_failed_probe_opens_the_breaker_again(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec(open_duration=0.1, half_open_calls=1))
    changes: list[str] = []
    breaker.on_state_change(lambda _name, _old, new: changes.append(new))
    trip(breaker)
    half_open(breaker)
    with pytest.raises(Down):
        breaker.call(down)
    assert wait_until(lambda: changes[-1:] == ["open"], timeout=STATE_BOUND)
    assert changes[:3] == ["open", "half_open", "open"]
    stats = breaker.stats()
    assert (stats.trips, stats.probes, stats.failures) == (2, 1, 5)


def test_a_thread_that_dies_holding_a_probe_gives_its_permit_back(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec(open_duration=0.1, half_open_calls=1))
    trip(breaker)
    half_open(breaker)
    entered, leave = threading.Event(), threading.Event()

    def take_a_probe_and_vanish() -> None:
        breaker.__enter__()  # a probe permit, and no __exit__: its outcome is never reported
        entered.set()
        leave.wait(30)

    thread, out = in_thread(take_a_probe_and_vanish)
    try:
        assert entered.wait(10), out
        assert breaker.stats().probes_out == 1
        with pytest.raises(BreakerOpen, match="every probe permit taken"):
            breaker.call(lambda: "second probe")
    finally:
        leave.set()
        thread.join(10)
    assert out == [None]
    assert wait_until(lambda: breaker.stats().probes_out == 0, timeout=STATE_BOUND)
    assert breaker.state == "half_open"
    assert breaker.call(lambda: "new probe") == "new probe"  # the permit was free again
    assert wait_until(lambda: breaker.state == "closed", timeout=STATE_BOUND)
    stats = breaker.stats()
    assert (stats.probes, stats.probes_out, stats.calls) == (2, 0, 5)  # the lost one not counted


# -- the operator ----------------------------------------------------------------------


def test_force_open_disable_and_reset(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec())
    ran: list[int] = []

    breaker.force_open()
    assert breaker.state == "forced_open"  # the handle that asked knows at once
    with pytest.raises(BreakerOpen) as refused:
        breaker.call(ran.append, 1)
    assert refused.value.remaining is None and "forced open" in str(refused.value)
    with pytest.raises(BreakerOpen), breaker:
        ran.append(2)
    stats = breaker.stats()
    assert (stats.state, stats.rejected, stats.calls) == ("forced_open", 2, 0)

    breaker.disable()
    assert breaker.state == "disabled"
    for _ in range(10):
        with pytest.raises(Down):
            breaker.call(down)
        with pytest.raises(Down), breaker:
            down()
    assert breaker.call(ran.append, 3) is None
    stats = breaker.stats()
    assert (stats.state, stats.calls, stats.failures, stats.trips) == ("disabled", 0, 0, 0)

    breaker.reset()
    assert breaker.state == "closed"
    trip(breaker)  # counts again, from an empty window
    breaker.reset()  # and closes an open breaker at once
    assert breaker.state == "closed"
    assert breaker.call(ran.append, 4) is None
    stats = breaker.stats()
    assert (stats.state, stats.calls, stats.failures, stats.window_calls) == ("closed", 5, 4, 1)
    assert ran == [3, 4]


def test_stats_report_counts_rates_and_subscribers(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec(window_size=10, minimum_calls=4))
    stats = breaker.stats()
    assert isinstance(stats, BreakerStats)
    assert stats.as_dict() == {
        "breaker": "api", "state": "closed", "generation": stats.generation,
        "time_in_state_s": stats.time_in_state_s, "calls": 0, "failures": 0, "slow_calls": 0,
        "rejected": 0, "ignored": 0, "trips": 0, "probes": 0, "probes_out": 0,
        "window_calls": 0, "failure_rate": -1.0, "slow_call_rate": -1.0, "subscribers": 1,
    }  # fmt: skip
    assert stats.time_in_state_s >= 0
    for _ in range(2):
        breaker.call(lambda: None)
    with pytest.raises(Down):
        breaker.call(down)
    assert breaker.stats().failure_rate == -1.0  # 3 calls: below minimum_calls
    breaker.call(lambda: None)
    stats = breaker.stats()
    assert (stats.calls, stats.failures, stats.window_calls) == (4, 1, 4)
    assert (stats.failure_rate, stats.slow_call_rate) == (25.0, 0.0)
    generation = stats.generation
    breaker.force_open()
    stats = breaker.stats()
    assert stats.generation == generation + 1  # every change of state
    assert (stats.state, stats.window_calls, stats.failure_rate) == ("forced_open", 0, -1.0)


def test_breakers_are_found_by_name(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec())
    assert runtime.breaker("api") is breaker
    assert repr(breaker) == "Breaker('api', closed)"
    with pytest.raises(NoSuchBreaker, match="'nope'"):
        runtime.breaker("nope")
    with pytest.raises(ValueError, match="exists already"):
        runtime.add_breaker(spec())
    with pytest.raises(TypeError, match="BreakerSpec"):
        runtime.add_breaker("api")  # type: ignore[arg-type]


# -- restarts of the actor -------------------------------------------------------------


def test_a_restarted_breaker_actor_keeps_its_state_and_its_subscribers(
    runtime: Runtime,
) -> None:
    breaker = runtime.add_breaker(spec(open_duration=60.0))
    changes: list[tuple[str, str]] = []
    breaker.on_state_change(lambda _name, old, new: changes.append((old, new)))
    trip(breaker)
    with pytest.raises(BreakerOpen):
        breaker.call(lambda: None)
    before = breaker.stats()
    first = breaker._route.actor_ref  # type: ignore[attr-defined]

    crash(breaker)
    assert wait_until(lambda: breaker._route.actor_ref is not first, timeout=STATE_BOUND)  # type: ignore[attr-defined]
    after = breaker.stats()
    assert after.state == "open"  # not closed: workers would hammer the failing dependency
    kept = ("calls", "failures", "rejected", "trips", "subscribers")
    assert [getattr(after, k) for k in kept] == [getattr(before, k) for k in kept]
    assert after.generation == before.generation + 1  # the restart's push
    assert wait_until(lambda: breaker._view[1] == after.generation, timeout=STATE_BOUND)
    with pytest.raises(BreakerOpen) as refused:
        breaker.call(lambda: None)
    assert refused.value.remaining is not None and refused.value.remaining > 50  # same ``until``
    kinds = [(e.kind, e.node) for e in runtime.events()]
    assert ("failed", "root/breaker:api") in kinds and ("restarted", "root/breaker:api") in kinds

    # A change made elsewhere (not by this handle) is still pushed to it.
    breaker._route.ask(ForceBreaker("api", "closed"))  # type: ignore[attr-defined]
    assert wait_until(lambda: len(changes) == 2, timeout=STATE_BOUND), changes
    assert changes == [("closed", "open"), ("open", "closed")]
    assert breaker.state == "closed"


def test_a_probe_permit_outlives_a_restart_of_the_actor(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(spec(open_duration=0.1, half_open_calls=1))
    trip(breaker)
    half_open(breaker)
    first = breaker._route.actor_ref  # type: ignore[attr-defined]
    with breaker:  # holds the only probe permit across the restart
        crash(breaker)
        assert wait_until(lambda: breaker._route.actor_ref is not first, timeout=STATE_BOUND)  # type: ignore[attr-defined]
        stats = breaker.stats()
        assert (stats.state, stats.probes_out) == ("half_open", 1)
        with pytest.raises(BreakerOpen):
            breaker.call(lambda: "another probe")
    # The probe's outcome reached the new incarnation: it succeeded, so closed.
    assert wait_until(lambda: breaker.state == "closed", timeout=STATE_BOUND)
    stats = breaker.stats()
    assert (stats.probes, stats.probes_out, stats.trips) == (1, 0, 1)


def test_a_probe_permit_its_caller_gave_up_on_goes_back() -> None:
    """A caller interrupted (or timed out) while asking for a probe never sees its
    permit: the route cancels the reply, and a permit that came anyway is given back."""
    from lessor.actors.reply import OneShot
    from lessor.holder import current_holder
    from lessor.protocol.messages import Probe, ProbePermit

    with Runtime(handle_signals=False) as runtime:
        breaker = runtime.add_breaker(BreakerSpec("api", half_open_calls=1, open_duration=30))
        breaker.force_open()
        target = runtime._breakers.targets["api"]
        actor = target._actor(1.0)
        actor.in_turn(lambda: actor.core._move(0.0, "half_open"))  # as if open had ended

        reply = OneShot()
        target.deliver(Probe("api"), reply, current_holder())
        assert isinstance(reply.get(5), ProbePermit)
        assert breaker.stats().probes_out == 1
        target.cancel(reply, current_holder())  # the answer won the race: undo it
        assert breaker.stats().probes_out == 0
        again = OneShot()
        target.deliver(Probe("api"), again, current_holder())
        assert isinstance(again.get(5), ProbePermit)  # the one permit is free again


def test_a_probe_permit_granted_after_its_asker_timed_out_goes_back(runtime: Runtime) -> None:
    """The asker's reply was cancelled (its wait timed out) before the actor granted:
    the grant is refused, and the actor takes the permit back."""
    from lessor.actors.reply import OneShot
    from lessor.holder import current_holder
    from lessor.protocol.messages import Probe

    breaker = runtime.add_breaker(spec(open_duration=0.1, half_open_calls=1))
    trip(breaker)
    half_open(breaker)
    actor = actor_of(breaker._route.actor_ref)  # type: ignore[attr-defined]
    assert actor is not None
    gone = OneShot()
    assert gone.cancel()  # as OneShot.get does when its wait times out
    actor.deliver(Probe(breaker.name), gone, current_holder())
    assert wait_until(lambda: breaker.stats().probes_out == 0, timeout=STATE_BOUND)
    assert breaker.call(lambda: "the one probe") == "the one probe"  # the permit is free
    assert wait_until(lambda: breaker.state == "closed", timeout=STATE_BOUND)
