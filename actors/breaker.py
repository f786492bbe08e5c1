"""BreakerActor: carries out what :class:`BreakerCore` decides, for every process.

It keeps the subscribers (in-process handles and worker connections) and pushes
each of them every change of state, after the turn. Probe permits are its alone:
a half-open breaker lets at most ``half_open_calls`` probes run across all
processes, and a probe whose holder dies gives its permit back.

**Its state survives a restart.** A crashed breaker actor comes back in the state
it was in (open stays open, with the same ``until``; the window, counters, probe
permits and subscribers are kept; the generation moves on, and every subscriber is
pushed the state again). Restarting it closed would let every worker hammer a
dependency the breaker had just found failing, which is the bug that per-process
breakers have whenever a process starts (pybreaker #26).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from lessor import holder as holders
from lessor.actors.base import DEFERRED, Call, LessorActor
from lessor.actors.pool_messages import HolderGone, Tick
from lessor.actors.reply import Reply, answer
from lessor.actors.scheduler import Scheduler, Timer, process_scheduler
from lessor.core.breaker import (
    IGNORED,
    BreakerCore,
    Changed,
    Decision,
    ProbeGranted,
    ProbeRefused,
)
from lessor.errors import ActorRestarted, ActorStopped, LessorError, ProtocolError
from lessor.holder import ANONYMOUS, Holder
from lessor.protocol.messages import (
    BreakerState,
    BreakerStats,
    ForceBreaker,
    GetStats,
    Outcomes,
    Probe,
    ProbePermit,
    ProbeResult,
    WatchBreaker,
)
from lessor.specs import BreakerSpec
from lessor.supervisor.events import EventLog

__all__ = ["BreakerActor", "BreakerLineage"]

log = logging.getLogger("lessor.breaker")

_TICK = Tick()


class BreakerLineage:
    """What a supervised breaker passes from one incarnation to the next: its core
    (state, window, counters, probe permits) and its subscribers."""

    def __init__(self) -> None:
        self.core: BreakerCore | None = None
        self.subscribers: set[Holder] = set()


@dataclass(frozen=True, slots=True)
class _Pushed:
    """A subscriber to push to, after the turn."""

    holder: Holder
    state: BreakerState


class BreakerActor(LessorActor):
    """One breaker. Start it with ``runtime.add_breaker(spec)``; use it through a Breaker."""

    lessor_kind = "breaker"

    def __init__(
        self,
        spec: BreakerSpec,
        *,
        lineage: BreakerLineage | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        scheduler: Scheduler | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self._lineage = lineage or BreakerLineage()
        self._events = events
        self._clock = clock
        self._scheduler = scheduler
        self._timer: Timer | None = None
        self._on_holder_gone: Callable[[Holder], None] | None = None
        self.core = self._lineage.core or BreakerCore(spec.settings, clock())
        self._lineage.core = self.core
        self.subscribers = self._lineage.subscribers

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        ref = self.actor_ref
        self._timer = (self._scheduler or process_scheduler()).timer(lambda: ref.tell(_TICK))
        self._on_holder_gone = lambda holder: ref.tell(HolderGone(holder))
        holders.subscribe(self._on_holder_gone)
        self.in_turn(self._start)

    def _start(self) -> None:
        core = self.core
        if self.subscribers:  # a restart: a push may have been lost with the last incarnation
            core.generation += 1
            self._send_all(self.state())
        self._arm()
        self.ready = True

    def on_stop(self) -> None:
        self._shutdown(ActorStopped(f"breaker {self.spec.name!r} is stopped"))

    def on_failure(self, *_exc_info: Any) -> None:
        self._shutdown(ActorRestarted(f"breaker {self.spec.name!r} failed; restarting"))

    def _shutdown(self, error: LessorError) -> None:
        if self._on_holder_gone is not None:
            holders.unsubscribe(self._on_holder_gone)
        if self._timer is not None:
            self._timer.cancel()
        self.in_turn(self.close_mailbox, error)

    # -- messages ----------------------------------------------------------------------

    def handle_call(self, call: Call) -> Any:
        msg, core, now = call.message, self.core, self._clock()
        if (to := getattr(msg, "breaker", self.spec.name)) != self.spec.name:
            raise ProtocolError(
                f"{type(msg).__name__} for {to!r} sent to breaker {self.spec.name!r}"
            )
        result: Any = None
        match msg:
            case Outcomes(_, generation, codes, rejected):
                self._apply(core.record(now, generation, codes, rejected))
            case ProbeResult(_, probe, code):
                self._apply(core.probe_done(now, probe, code))
            case Probe():
                if call.reply is None:
                    raise ProtocolError("Probe must be asked, not told: its permit is the reply")
                self._apply(core.probe(now, call.reply, call.holder))
                result = DEFERRED
            case WatchBreaker():
                self.subscribers.add(call.holder)
                self._apply(core.tick(now))
                result = self.state()
            case ForceBreaker(_, state):
                self._apply(core.force(now, cast(Any, state)))
                result = self.state()
            case GetStats():
                result = self.stats(now)
            case _:
                return super().handle_call(call)
        self._arm()
        return result

    def handle_internal(self, message: Any) -> Any:
        now = self._clock()
        match message:
            case Tick():
                self._apply(self.core.tick(now))
            case HolderGone(holder):
                self.subscribers.discard(holder)
                self._apply(self.core.holder_gone(now, holder))
            case _:
                return super().handle_internal(message)
        self._arm()
        return None

    # -- carrying out decisions --------------------------------------------------------

    def _apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            match d:
                case ProbeGranted(ticket, probe, generation):
                    permit = ProbePermit(self.spec.name, probe, generation)
                    self.later(self._hand_permit, cast(Reply, ticket), permit)
                case ProbeRefused(ticket):  # the state, for a handle whose view is behind
                    self.reply(cast(Reply, ticket), self.state())
                case Changed():
                    self._push(d)

    def _hand_permit(self, ticket: Reply, permit: ProbePermit) -> None:
        """After the turn: a permit its asker no longer takes (it timed out) comes back."""
        if not answer(ticket, permit):
            self.deliver(ProbeResult(self.spec.name, permit.probe, IGNORED), None, ANONYMOUS)

    def _push(self, change: Changed) -> None:
        self._send_all(BreakerState(self.spec.name, change.state, change.generation, change.until))
        self.later(self._changed, change)

    def _send_all(self, state: BreakerState) -> None:
        for holder in self.subscribers:
            self.later(self._send, _Pushed(holder, state))

    def _send(self, pushed: _Pushed) -> None:
        receiver = holders.holder_receiver(pushed.holder)
        if receiver is not None:
            receiver.tell(pushed.state)

    def _changed(self, change: Changed) -> None:
        log.info("breaker %r: %s -> %s", self.spec.name, change.previous, change.state)
        if self._events is not None:
            self._events.emit(
                "breaker_state", self.spec.name, f"{change.previous} -> {change.state}"
            )

    def _arm(self) -> None:
        timer, due = self._timer, self.core.next_deadline()
        if timer is not None and due is not None and due < timer.due:
            timer.schedule(due)

    # -- what callers read -------------------------------------------------------------

    def state(self) -> BreakerState:
        core = self.core
        return BreakerState(self.spec.name, core.state, core.generation, core.until)

    def stats(self, now: float) -> BreakerStats:
        core, totals = self.core, self.core.totals
        failure_rate, slow_rate = core.rates(now)
        return BreakerStats(
            self.spec.name, core.state, core.generation, max(0.0, now - core.changed_at),
            totals.calls, totals.failed, totals.slow, totals.rejected, totals.ignored,
            totals.trips, totals.probes, core.probes_out, core.window.calls,
            failure_rate, slow_rate, len(self.subscribers),
        )  # fmt: skip
