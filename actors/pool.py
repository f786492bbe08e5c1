"""PoolActor: a pykka actor that carries out what :class:`PoolCore` decides.

The actor thread only does bookkeeping. Factory calls (create, destroy, check,
reset), which may block on a network, run on a small thread pool and report back
by message, so releases keep flowing while a connection is being opened. Waiter
timeouts, lease expiry and idle eviction are woken by a :class:`DeadlineTimer`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import pykka
from lessor.actors.base import DEFERRED, Call, LessorActor, Reply, answer, answer_error
from lessor.actors.timer import DeadlineTimer

from lessor.core.pool import (
    Check,
    Create,
    Decision,
    Destroy,
    Fail,
    Grant,
    PoolCore,
    Reset,
)
from lessor.errors import LessorError, NoSuchPool, ProtocolError
from lessor.factory import overrides
from lessor.messages import Acquire, GetStats, Lease, Release, Renew
from lessor.specs import PoolSpec

__all__ = ["CancelAcquire", "PoolActor"]

log = logging.getLogger("lessor.pool")


# Internal messages: they never leave the process, so they are not lessor Messages.
@dataclass(frozen=True, slots=True)
class _Tick:
    pass


@dataclass(frozen=True, slots=True)
class _Created:
    resource: Any


@dataclass(frozen=True, slots=True)
class _CreateFailed:
    error: BaseException


@dataclass(frozen=True, slots=True)
class _Checked:
    slot: int
    ok: bool


@dataclass(frozen=True, slots=True)
class _ResetDone:
    slot: int
    ok: bool


@dataclass(frozen=True, slots=True)
class CancelAcquire:
    """Sent by a caller whose own wait gave up first (poolboy's ``cancel_waiting``).

    If the Acquire was granted in the meantime, the lease is released so it is not lost.
    """

    reply: Reply
    holder: str


_TICK = _Tick()


class PoolActor(LessorActor):
    """One pool. Start with ``PoolActor.start(spec)``; talk to it through a PoolHandle."""

    def __init__(
        self,
        spec: PoolSpec,
        *,
        epoch: str | None = None,
        past_epochs: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.epoch = epoch or secrets.token_hex(4)
        self._factory = spec.factory
        self._clock = clock
        self.core = PoolCore(
            spec,
            epoch=self.epoch,
            has_check=overrides(spec.factory, "check"),
            has_reset=overrides(spec.factory, "reset"),
            reusable=spec.factory.reusable,
            past_epochs=past_epochs,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._timer: DeadlineTimer | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        name = self.spec.name
        self._executor = ThreadPoolExecutor(self.spec.workers, thread_name_prefix=f"lessor-{name}")
        ref = self.actor_ref
        self._timer = DeadlineTimer(
            lambda: ref.tell(_TICK), name=f"lessor-{name}-timer", clock=self._clock
        )
        self._apply(self.core.start(self._clock()))

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, *_exc_info: Any) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        self._apply(self.core.close(self._clock()))
        self.drain_inbox(self._late_tell)
        if self._timer is not None:
            self._timer.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        # Results that raced the stop: their jobs saw a dead actor and cleaned up.
        self.drain_inbox(self._late_tell)

    def _late_tell(self, message: Any) -> None:
        # The closed core turns late resources into Destroy decisions.
        if isinstance(message, (_Created, _CreateFailed, _Checked, _ResetDone)):
            self.handle_internal(message)

    # -- messages ----------------------------------------------------------------------

    def handle_call(self, call: Call) -> Any:
        msg = call.message
        now = self._clock()
        core = self.core
        if isinstance(msg, Acquire):
            if msg.pool != self.spec.name:
                raise NoSuchPool(f"Acquire for {msg.pool!r} sent to pool {self.spec.name!r}")
            if call.reply is None:
                raise ProtocolError("Acquire must be asked, not told: its Lease is the reply")
            self._apply(
                core.acquire(now, call.reply, call.holder, msg.timeout, msg.priority, msg.ttl)
            )
            result = DEFERRED
        elif isinstance(msg, Release):
            self._apply(core.release(now, msg.lease_id, call.holder, msg.broken))
            result = None
        elif isinstance(msg, Renew):
            result = core.renew(now, msg.lease_id, call.holder, msg.ttl)
        elif isinstance(msg, GetStats):
            result = core.stats()
        else:
            return super().handle_call(call)
        self._arm()
        return result

    def handle_internal(self, message: Any) -> Any:
        core = self.core
        now = self._clock()
        if message is _TICK:
            self._apply(core.tick(now))
        elif isinstance(message, _Created):
            self._apply(core.created(now, message.resource))
        elif isinstance(message, _CreateFailed):
            log.warning("pool %r: factory failed: %r", self.spec.name, message.error)
            self._apply(core.create_failed(now, message.error))
        elif isinstance(message, _Checked):
            self._apply(core.checked(now, message.slot, message.ok))
        elif isinstance(message, _ResetDone):
            self._apply(core.reset_done(now, message.slot, message.ok))
        elif isinstance(message, CancelAcquire):
            self._cancel(now, message)
        else:
            return super().handle_internal(message)
        self._arm()
        return None

    def _cancel(self, now: float, message: CancelAcquire) -> None:
        self._apply(self.core.cancel(now, message.reply))
        try:
            granted = message.reply.get(timeout=0)  # type: ignore[attr-defined]
        except Exception:  # not answered (now cancelled) or answered with an error
            return
        if isinstance(granted, Lease):
            with contextlib.suppress(LessorError):  # released or reclaimed already
                self._apply(self.core.release(now, granted.id, message.holder))

    # -- carrying out decisions --------------------------------------------------------

    def _arm(self) -> None:
        timer = self._timer
        if timer is not None:
            due = self.core.next_deadline()
            if due is not None and due < timer.due:
                timer.schedule(due)

    def _apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Grant):
                answer(cast(Reply, d.ticket), d.lease)
            elif isinstance(d, Fail):
                answer_error(cast(Reply, d.ticket), d.error)
            elif isinstance(d, Create):
                self._submit(self._create)
            elif isinstance(d, Destroy):
                self._submit(self._destroy, d.resource, d.reason)
            elif isinstance(d, Check):
                self._submit(self._check, d.slot, d.resource)
            elif isinstance(d, Reset):
                self._submit(self._reset, d.slot, d.resource)
            else:
                self.on_expired(d.lease)

    def on_expired(self, lease: Lease) -> None:
        """A lease ran out and was reclaimed; supervised pools tell its holder."""
        log.info(
            "pool %r: lease %s of %s expired and was reclaimed",
            self.spec.name,
            lease.id,
            lease.holder,
        )

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        executor = self._executor
        if executor is None:  # not started, or shutting down: do it here
            fn(*args)
            return
        try:
            executor.submit(fn, *args)
        except RuntimeError:  # executor already shut down
            fn(*args)

    # -- factory work, on executor threads ---------------------------------------------

    def _tell(self, message: Any) -> bool:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            return False
        return True

    def _create(self) -> None:
        try:
            resource = self._factory.create()
        except Exception as exc:
            self._tell(_CreateFailed(exc))
            return
        if not self._tell(_Created(resource)):
            self._destroy(resource, "closed")

    def _destroy(self, resource: Any, reason: str) -> None:
        try:
            self._factory.destroy(resource)
        except Exception:
            log.exception("pool %r: destroying a resource (%s) failed", self.spec.name, reason)

    def _check(self, slot: int, resource: Any) -> None:
        try:
            ok = bool(self._factory.check(resource))
        except Exception:
            log.warning("pool %r: check raised", self.spec.name, exc_info=True)
            ok = False
        if not self._tell(_Checked(slot, ok)):
            self._destroy(resource, "closed")

    def _reset(self, slot: int, resource: Any) -> None:
        try:
            self._factory.reset(resource)
            ok = True
        except Exception:
            log.warning("pool %r: reset raised", self.spec.name, exc_info=True)
            ok = False
        if not self._tell(_ResetDone(slot, ok)):
            self._destroy(resource, "closed")
