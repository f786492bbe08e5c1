"""PoolActor: a pykka actor that carries out what :class:`PoolCore` decides.

A turn only does bookkeeping. Factory calls (create, destroy, check, reset), which
may block on a network, run on the runtime's shared factory threads (at most
``factory_concurrency`` at once for this pool) and report back by message, so
releases keep flowing while a connection is being opened. Waiter timeouts, lease
expiry and idle eviction are woken by the runtime's :class:`Scheduler`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, cast

import pykka

from lessor import holder as holders
from lessor.actors.base import DEFERRED, Call, LessorActor
from lessor.actors.executor import FactoryLane, FactoryThreads, process_factory_threads
from lessor.actors.pool_factory import FactoryWork
from lessor.actors.pool_messages import (
    AwaitDrained,
    BeginDrain,
    BreakerGate,
    CancelAcquire,
    Checked,
    Created,
    CreateFailed,
    EvictIdle,
    HolderGone,
    PoolLineage,
    ReclaimAll,
    ReclaimHolder,
    ResetDone,
    Tick,
)
from lessor.actors.pushes import push
from lessor.actors.reply import OneShot, Reply
from lessor.actors.scheduler import Scheduler, Timer, process_scheduler
from lessor.core.decisions import (
    AskBack,
    AskShed,
    Check,
    Create,
    Decision,
    Destroy,
    Drained,
    Expired,
    Fail,
    Filled,
    Grant,
    Reclaimed,
    Reset,
)
from lessor.core.pool import PoolCore
from lessor.errors import (
    ActorRestarted,
    LessorError,
    NoSuchPool,
    PoolClosed,
    ProtocolError,
    ShuttingDown,
)
from lessor.factory import overrides
from lessor.holder import Holder
from lessor.protocol.messages import (
    Acquire,
    Admission,
    GetStats,
    GiveBack,
    Lease,
    LeaseExpired,
    PoolStats,
    Release,
    Renew,
)
from lessor.protocol.pool_messages import Ready, Wait
from lessor.protocol.quota_messages import Shed
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


_TICK = Tick()
#: Seconds a stopping pool waits for factory calls under way (a create stuck on a dead
#: network is abandoned after that; what it makes is destroyed when it returns).
FACTORY_STOP_WAIT = 4.0


class PoolActor(LessorActor):
    """One pool. Start with ``PoolActor.start(spec)``; talk to it through a PoolHandle.

    Under a supervisor, ``lineage`` carries epochs and orphaned leases across
    restarts and ``events`` receives a record of every reclaimed lease. Every
    decision is :class:`PoolCore`'s; this shell feeds it messages and carries out
    what it returns (:meth:`_apply`).
    """

    lessor_kind = "pool"

    def __init__(
        self,
        spec: PoolSpec,
        *,
        lineage: PoolLineage | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        scheduler: Scheduler | None = None,
        factory_threads: FactoryThreads | None = None,
        gate: Callable[[], BreakerGate] | None = None,
        fair_share: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self._gate = gate  # the state of the pool's breaker now (spec.breaker)
        self.epoch = secrets.token_hex(4)
        self._lineage = lineage or PoolLineage()
        self._events = events
        self._work = FactoryWork(spec.factory, spec.name, self.deliver_internal)
        self._clock = clock
        orphans, self._lineage.orphans = self._lineage.orphans, []
        self.core = PoolCore(
            spec,
            epoch=self.epoch,
            has_check=spec.factory.checks_on_borrow(),
            has_reset=overrides(spec.factory, "reset"),
            reusable=spec.factory.reusable,
            past_epochs=frozenset(self._lineage.epochs),
            orphans=orphans,
            paused=self._lineage.paused,
            fair_share=fair_share,  # a global quota's (see lessor.core.pool.fairshare)
        )
        self._lineage.epochs.append(self.epoch)
        self._scheduler = scheduler
        self._factory_threads = factory_threads
        self._executor: FactoryLane | None = None
        self._timer: Timer | None = None
        self._failed = False
        self._on_holder_gone: Callable[[Holder], None] | None = None
        self._calls: dict[type, Callable[[float, Call, Any], Any]] = {
            Acquire: self._acquire,
            Release: self._release,
            Renew: self._renew,
            GetStats: self._stats,
            Admission: self._admission,
            Wait: self._wait,
        }

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        name = self.spec.name
        ref = self.actor_ref
        try:
            threads = self._factory_threads or process_factory_threads()
            self._executor = threads.lane(self.spec.factory_concurrency, f"pool {name!r}")
            self._timer = (self._scheduler or process_scheduler()).timer(lambda: ref.tell(_TICK))
            self._on_holder_gone = lambda holder: ref.tell(HolderGone(holder))
            holders.subscribe(self._on_holder_gone)
            self.in_turn(self._start)
        except BaseException:
            self._failed = True
            self._shutdown()
            raise

    def _start(self) -> None:
        if self._gate is not None:  # a restarted pool is as open as its breaker is
            gate = self._gate()
            self.core.gate(self._clock(), gate.breaker, gate.state, gate.until)
        self._apply(self.core.start(self._clock()))
        self._arm()
        self.ready = True  # from now on callers run turns on their own threads

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, *_exc_info: Any) -> None:
        self._failed = True
        self._shutdown()

    def _shutdown(self) -> None:
        if self._on_holder_gone is not None:
            holders.unsubscribe(self._on_holder_gone)
        self.in_turn(self._close)
        if self._timer is not None:
            self._timer.cancel()
        if self._executor is not None:
            # Results that come back later are still handled: the closed core destroys them.
            self._executor.shutdown(FACTORY_STOP_WAIT)

    def _close(self) -> None:
        now = self._clock()
        error: LessorError
        if self._failed:
            # Holders keep what they hold; the next incarnation adopts it as orphans.
            self._lineage.orphans = self.core.handover()
            error = ActorRestarted(f"pool {self.spec.name!r} failed; restarting")
            self._apply(self.core.close(now, error))
        else:
            error = PoolClosed(f"pool {self.spec.name!r} is stopped")
            self._apply(self.core.close(now))
            self._apply(self.core.reclaim_all(now, "pool stopped")[1])
        self.close_mailbox(error)

    def on_refused(self, leases: list[Lease]) -> None:
        """Grants nobody took (the caller gave up or its worker died): back into the pool."""
        now = self._clock()
        for lease in leases:
            self._apply(self.core.refused(now, lease.id, lease.holder))
        self._arm()

    # -- messages ----------------------------------------------------------------------

    def handle_call(self, call: Call) -> Any:
        handler = self._calls.get(type(call.message))
        if handler is None:
            return super().handle_call(call)
        result = handler(self._clock(), call, call.message)
        self._arm()
        return result

    def _acquire(self, now: float, call: Call, msg: Acquire) -> Any:
        if msg.pool != self.spec.name:
            raise NoSuchPool(f"Acquire for {msg.pool!r} sent to pool {self.spec.name!r}")
        if call.reply is None:
            raise ProtocolError("Acquire must be asked, not told: its Lease is the reply")
        self._apply(
            self.core.acquire(now, call.reply, call.holder, msg.timeout, msg.priority, msg.ttl)
        )
        return DEFERRED

    def _wait(self, now: float, call: Call, msg: Wait) -> Any:
        if msg.pool != self.spec.name:
            raise NoSuchPool(f"Wait for {msg.pool!r} sent to pool {self.spec.name!r}")
        if call.reply is None:
            raise ProtocolError("Wait must be asked, not told: its Ready is the reply")
        self._apply(self.core.wait(now, call.reply, msg.timeout))
        return DEFERRED

    def _release(self, now: float, call: Call, msg: Release) -> None:
        decisions = self.core.release(now, msg.lease_id, call.holder, msg.broken)
        if type(call.reply) is OneShot and call.here:
            # An in-process caller whose own thread runs this turn still owns the
            # resource: its reset runs right after the turn, on that thread, before
            # release() returns (psycopg_pool's putconn), not on a factory thread.
            for i, d in enumerate(decisions):
                if type(d) is Reset:
                    self.later(self._work.reset, d.slot, d.resource)
                    del decisions[i]
                    break
        self._apply(decisions)

    def _renew(self, now: float, call: Call, msg: Renew) -> Lease:
        return self.core.renew(now, msg.lease_id, call.holder, msg.ttl)

    def _admission(self, now: float, call: Call, msg: Admission) -> None:
        if call.holder.kind == "worker":
            raise ProtocolError("Admission is the runtime's to decide, not a worker's")
        if msg.paused:
            self._lineage.paused[msg.holder] = msg.why or "paused"
        else:
            self._lineage.paused.pop(msg.holder, None)
        self._apply(self.core.admission(now, msg.holder, msg.paused, msg.why))

    def _stats(self, _now: float, _call: Call, _msg: GetStats) -> PoolStats:
        return self.core.stats()

    def handle_internal(self, message: Any) -> Any:
        core = self.core
        now = self._clock()
        result: Any = None
        match message:
            case Tick():
                self._apply(core.tick(now))
                core.take_alarm()  # the full look below covers what the tick added
                self._arm(after_tick=True)
                return None
            case Created(resource):
                self._apply(core.created(now, resource))
            case CreateFailed(error):
                log.warning("pool %r: factory failed: %r", self.spec.name, error)
                self._apply(core.create_failed(now, error))
            case Checked(slot, ok):
                self._apply(core.checked(now, slot, ok))
            case ResetDone(slot, ok):
                self._apply(core.reset_done(now, slot, ok))
            case CancelAcquire(reply):
                # The caller cancelled its reply first: a grant racing this is refused
                # by the reply and comes back through on_refused.
                self._apply(core.cancel(now, reply))
            case HolderGone(holder):
                self._lineage.paused.pop(holder, None)
                self._apply(core.reclaim_holder(now, holder))
            case BreakerGate(breaker, state, until):
                self._apply(core.gate(now, breaker, state, until))
            case EvictIdle():
                self._apply(core.evict_idle(now))
            case Shed(_, count):  # this process's quota wants connections back
                self._apply(core.shed(now, count))
            case BeginDrain():
                error = ShuttingDown(f"pool {self.spec.name!r} shutting down")
                self._apply(core.begin_drain(now, error))
            case AwaitDrained(reply):
                self._apply(core.await_drained(now, reply))
            case ReclaimAll(why):
                result, decisions = core.reclaim_all(now, why)
                self._apply(decisions)
            case ReclaimHolder(holder, why):
                self._lineage.paused.pop(holder, None)
                decisions = core.reclaim_holder(now, holder, why)
                self._apply(decisions)
                result = [d.lease for d in decisions if isinstance(d, Reclaimed)]
            case _:
                return super().handle_internal(message)
        self._arm()
        return result

    # -- carrying out decisions --------------------------------------------------------

    def _arm(self, after_tick: bool = False) -> None:
        """Wake for the core's next deadline: O(1) per turn, a full look after a tick."""
        timer = self._timer
        if timer is not None:
            due = self.core.next_deadline() if after_tick else self.core.take_alarm()
            if due is not None and due < timer.due:
                timer.schedule(due)

    def _apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            match d:
                case Grant(ticket, lease):
                    self.grant(cast(Reply, ticket), lease)
                case Fail(ticket, error):
                    self.reply_error(cast(Reply, ticket), error)
                case Create():
                    self.later(self._submit, self._work.create)
                case Destroy(resource, reason):
                    self.later(self._submit, self._work.destroy, resource, reason)
                case Check(slot, resource):
                    self.later(self._submit, self._work.check, slot, resource)
                case Reset(slot, resource):
                    self.later(self._submit, self._work.reset, slot, resource)
                case Reclaimed(lease, why):
                    self.later(self._reclaimed, f"{lease.id} of {lease.holder}: {why}")
                case Expired(lease):
                    self.later(self.on_expired, lease)
                case AskBack(asked):
                    push(self.later, asked, GiveBack(self.spec.name))
                case AskShed(holder, count):
                    push(self.later, (holder,), Shed(self.spec.name, count))
                case Drained(ticket):
                    self.reply(cast(Reply, ticket), None)
                case Filled(ticket, size):
                    self.reply(cast(Reply, ticket), Ready(self.spec.name, size))

    def on_expired(self, lease: Lease) -> None:
        """A lease ran out and was reclaimed: tell an actor holder (a thread finds out on exit).

        Runs after the turn: the receiver may be a worker's socket.
        """
        receiver = holders.holder_receiver(lease.holder)
        if receiver is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                receiver.tell(LeaseExpired(lease.id, lease.pool))

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
