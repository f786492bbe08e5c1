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
from dataclasses import dataclass
from typing import Any, cast

import pykka

from lessor import holder as holders
from lessor.actors.base import DEFERRED, Call, LessorActor, Reply
from lessor.actors.executor import FactoryThreads
from lessor.actors.timer import DeadlineTimer
from lessor.core.pool import (
    Check,
    Create,
    Decision,
    Destroy,
    Fail,
    Grant,
    PoolCore,
    Reclaimed,
    Reset,
)
from lessor.errors import (
    ActorRestarted,
    LessorError,
    NoSuchPool,
    ProtocolError,
    ShuttingDown,
    StaleLease,
)
from lessor.factory import overrides
from lessor.protocol.messages import (
    Acquire,
    GetStats,
    Lease,
    LeaseExpired,
    Release,
    Renew,
    ReturnParked,
)
from lessor.specs import PoolSpec
from lessor.supervisor.events import EventLog

__all__ = [
    "AwaitDrained",
    "BeginDrain",
    "CancelAcquire",
    "EvictIdle",
    "PoolActor",
    "PoolLineage",
    "ReclaimAll",
    "ReclaimHolder",
]

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
class _HolderGone:
    holder: str


@dataclass(frozen=True, slots=True)
class EvictIdle:
    """Close idle resources above min_size now (their quota is wanted elsewhere)."""


@dataclass(frozen=True, slots=True)
class BeginDrain:
    """Shutdown, step 1: refuse new Acquires (ShuttingDown) and fail queued ones."""


@dataclass(frozen=True, slots=True)
class AwaitDrained:
    """Shutdown, step 2: ``reply`` is answered once no lease is out."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class ReclaimAll:
    """Shutdown, step 3 (the deadline passed): take every lease back; answered with them."""

    why: str


@dataclass(frozen=True, slots=True)
class ReclaimHolder:
    """Take back every lease of ``holder`` now; answered with them (a shutdown's own caller)."""

    holder: str
    why: str = "reclaimed from the caller of shutdown"


class PoolLineage:
    """What one supervised pool passes from an incarnation to the next.

    The epochs of earlier incarnations (their leases are stale, not unknown) and the
    leases a crashed incarnation left with live holders (orphans: their resources
    are destroyed when the holder lets go, and count against ``max_size`` till then).
    """

    def __init__(self) -> None:
        self.epochs: list[str] = []
        self.orphans: list[Lease] = []


@dataclass(frozen=True, slots=True)
class CancelAcquire:
    """Sent by a caller whose own wait gave up first (poolboy's ``cancel_waiting``).

    If the Acquire was granted in the meantime, the lease is released so it is not lost.
    """

    reply: Reply
    holder: str


_TICK = _Tick()
#: While Acquires wait and nothing is free, holders are asked for parked leases this often.
NUDGE_INTERVAL = 0.05
#: Seconds a stopping pool waits for factory calls under way (a create stuck on a dead
#: network is abandoned after that; what it makes is destroyed when it returns).
FACTORY_STOP_WAIT = 4.0


class PoolActor(LessorActor):
    """One pool. Start with ``PoolActor.start(spec)``; talk to it through a PoolHandle.

    Under a supervisor, ``lineage`` carries epochs and orphaned leases across
    restarts and ``events`` receives a record of every reclaimed lease.
    """

    lessor_kind = "pool"

    def __init__(
        self,
        spec: PoolSpec,
        *,
        lineage: PoolLineage | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.epoch = secrets.token_hex(4)
        self._lineage = lineage or PoolLineage()
        self._events = events
        self._factory = spec.factory
        self._clock = clock
        orphans, self._lineage.orphans = self._lineage.orphans, []
        self.core = PoolCore(
            spec,
            epoch=self.epoch,
            has_check=overrides(spec.factory, "check"),
            has_reset=overrides(spec.factory, "reset"),
            reusable=spec.factory.reusable,
            past_epochs=frozenset(self._lineage.epochs),
            orphans=orphans,
        )
        self._lineage.epochs.append(self.epoch)
        self._executor: FactoryThreads | None = None
        self._timer: DeadlineTimer | None = None
        self._drained: list[Reply] = []
        self._nudging = False  # workers were asked for parked leases; ask again while starved
        self._failed = False
        self._on_holder_gone: Callable[[str], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        name = self.spec.name
        ref = self.actor_ref
        try:
            self._executor = FactoryThreads(self.spec.workers, f"lessor-{name}")
            self._timer = DeadlineTimer(
                lambda: ref.tell(_TICK), name=f"lessor-{name}-timer", clock=self._clock
            )
            self._on_holder_gone = lambda holder: ref.tell(_HolderGone(holder))
            holders.subscribe(self._on_holder_gone)
            self.in_turn(self._start)
        except BaseException:
            self._failed = True
            self._shutdown()
            raise

    def _start(self) -> None:
        self._apply(self.core.start(self._clock()))
        self._arm()
        self._ready = True  # from now on callers may run turns on their own threads

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, *_exc_info: Any) -> None:
        self._failed = True
        self._shutdown()

    def _shutdown(self) -> None:
        if self._on_holder_gone is not None:
            holders.unsubscribe(self._on_holder_gone)
        self.in_turn(self._close)
        self.drain_inbox(self._late_tell)
        if self._timer is not None:
            self._timer.close()
        if self._executor is not None:
            self._executor.shutdown(FACTORY_STOP_WAIT)
        # Results that raced the stop: their jobs saw a dead actor and cleaned up.
        self.drain_inbox(self._late_tell)

    def _close(self) -> None:
        now = self._clock()
        if self._failed:
            # Holders keep what they hold; the next incarnation adopts it as orphans.
            self._lineage.orphans = self.core.handover()
            error: LessorError = ActorRestarted(f"pool {self.spec.name!r} failed; restarting")
            self._apply(self.core.close(now, error))
        else:
            self._apply(self.core.close(now))
            self._apply(self.core.reclaim_all(now, "pool stopped")[1])
        for reply in self._drained:
            self.reply(reply, None)
        self._drained.clear()

    def _late_tell(self, message: Any) -> None:
        # The closed core turns late resources into Destroy decisions.
        if isinstance(message, (_Created, _CreateFailed, _Checked, _ResetDone)):
            self.in_turn(self.handle_internal, message)

    def on_refused(self, leases: list[Lease]) -> None:
        """Grants nobody took (the caller gave up or its worker died): back into the pool."""
        now = self._clock()
        for lease in leases:
            with contextlib.suppress(LessorError):  # reclaimed meanwhile (holder gone)
                self._apply(self.core.release(now, lease.id, lease.holder))
        self._arm()

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
            if core.starved and not self._nudging:  # then again every NUDGE_INTERVAL
                self._nudging = self._ask_parked_back()
            result = DEFERRED
        elif isinstance(msg, Release):
            try:
                self._apply(core.release(now, msg.lease_id, call.holder, msg.broken))
            except StaleLease as exc:  # accepted: the restart already took it back
                log.info("pool %r: %s (ignored)", self.spec.name, exc)
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
            if self._nudging and core.starved:  # still waiting: ask again
                self._nudging = self._ask_parked_back()
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
        elif isinstance(message, _HolderGone):
            if core.leases_of(message.holder) or core.orphans or core.waiting:
                self._apply(core.reclaim_holder(now, message.holder))
        elif isinstance(message, EvictIdle):
            self._apply(core.evict_idle(now))
        elif isinstance(message, BeginDrain):
            core.stop_admitting()
            self._apply(core.fail_waiters(ShuttingDown(f"pool {self.spec.name!r} shutting down")))
        elif isinstance(message, AwaitDrained):
            self._drained.append(message.reply)
        elif isinstance(message, ReclaimAll):
            taken, decisions = core.reclaim_all(now, message.why)
            self._apply(decisions)
            self._arm()
            return taken
        elif isinstance(message, ReclaimHolder):
            decisions = core.reclaim_holder(now, message.holder, message.why)
            self._apply(decisions)
            self._arm()
            return [d.lease for d in decisions if isinstance(d, Reclaimed)]
        else:
            return super().handle_internal(message)
        self._arm()
        return None

    def _cancel(self, now: float, message: CancelAcquire) -> None:
        # The caller cancelled its reply first, so a grant racing this is refused by
        # the reply and comes back through on_refused: only the queue entry is left.
        self._apply(self.core.cancel(now, message.reply))

    # -- carrying out decisions --------------------------------------------------------

    def _arm(self) -> None:
        if self._drained and not self.core.leased:
            for reply in self._drained:
                self.reply(reply, None)
            self._drained.clear()
        if self._nudging and not self.core.starved:
            self._nudging = False  # the next starved Acquire asks at once
        timer = self._timer
        if timer is not None:
            due = self.core.next_deadline()
            if self._nudging:
                # Parked leases and idle quota come back only when asked: ask again soon.
                nudge = self._clock() + NUDGE_INTERVAL
                due = nudge if due is None else min(due, nudge)
            if due is not None and due < timer.due:
                timer.schedule(due)

    def _apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Grant):
                self.grant(cast(Reply, d.ticket), d.lease)
            elif isinstance(d, Fail):
                self.reply_error(cast(Reply, d.ticket), d.error)
            elif isinstance(d, Create):
                self.later(self._submit, self._create)
            elif isinstance(d, Destroy):
                self.later(self._submit, self._destroy, d.resource, d.reason)
            elif isinstance(d, Check):
                self.later(self._submit, self._check, d.slot, d.resource)
            elif isinstance(d, Reset):
                self.later(self._submit, self._reset, d.slot, d.resource)
            elif isinstance(d, Reclaimed):
                self.later(self._reclaimed, f"{d.lease.id} of {d.lease.holder}: {d.why}")
            else:
                self.later(self.on_expired, d.lease)

    def on_expired(self, lease: Lease) -> None:
        """A lease ran out and was reclaimed: tell an actor holder (a thread finds out on exit).

        Runs after the turn: the receiver may be a worker's socket.
        """
        receiver = holders.holder_receiver(lease.holder)
        if receiver is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                receiver.tell(LeaseExpired(lease.id, lease.pool))

    def _ask_parked_back(self) -> bool:
        """Someone waits and nothing is free: workers caching leases should return them.

        The asker's own process is asked too: another of its handles may have parked
        one. Returns whether any worker was asked; if none was (an in-process pool),
        there is no point in waking up to ask again.
        """
        notice = ReturnParked(self.spec.name)
        asked = False
        for holder in self.core.holders():
            receiver = holders.holder_receiver(holder)
            if receiver is not None and holder.startswith("worker:"):
                self.later(receiver.tell, notice)  # a socket send: after the turn
                asked = True
        return asked

    def _reclaimed(self, detail: str) -> None:
        log.info("pool %r: lease reclaimed (%s)", self.spec.name, detail)
        if self._events is not None:
            self._events.emit("lease_reclaimed", self.spec.name, detail)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        """After a turn: factory work goes to the executor, so the turn never waits on it."""
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
        except Exception as exc:  # the designed way to say "do not reuse this one"
            log.info("pool %r: reset refused a resource: %r", self.spec.name, exc)
            ok = False
        if not self._tell(_ResetDone(slot, ok)):
            self._destroy(resource, "closed")
