"""BatchActor: carries out what :class:`BatchCore` decides, for every process.

Submits come from in-process handles and from workers' frames; each is answered
once every item in it has an outcome. The processor never runs in a turn: a
:class:`~lessor.core.batch_decisions.Run` goes to the batcher's lane of the
runtime's factory threads (at most ``max_in_flight`` at once), and its outcome
comes back as a message of its own.

**Nothing accepted is lost when the actor crashes.** The core (queue, batches,
waiting submitters) lives in the :class:`BatchLineage`, which the supervisor hands
to the next incarnation; that one answers the same submitters. A batch that was
running when its actor crashed runs again (its first outcome may never arrive),
so delivery to the processor is at least once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from threading import Event
from typing import Any

from lessor import holder as holders
from lessor.actors.base import DEFERRED, Call, LessorActor
from lessor.actors.executor import FactoryLane, process_factory_threads
from lessor.actors.pool_messages import HolderGone, Tick
from lessor.actors.reply import answer
from lessor.actors.scheduler import Scheduler, Timer, process_scheduler
from lessor.core.batch import BatchCore
from lessor.core.batch_decisions import (
    Answer,
    BatchEvent,
    Decision,
    Finished,
    FlushDone,
    Run,
)
from lessor.errors import ActorRestarted, ActorStopped, LessorError, ProtocolError
from lessor.holder import Holder
from lessor.protocol.messages import BatcherStats, FlushBatcher, GetStats, Submit
from lessor.specs import BatchSpec
from lessor.supervisor.events import EventLog

__all__ = ["AwaitIdle", "BatchActor", "BatchLineage", "FailOutstanding", "StartDrain"]

log = logging.getLogger("lessor.batch")

_TICK = Tick()
#: How long a stopping batcher waits for processor runs still going (seconds).
LANE_STOP = 5.0


class BatchLineage:
    """What a supervised batcher passes from one incarnation to the next: its core (the
    accepted items, their batches and their submitters), its processor threads, and
    the incarnation its runs report to (the newest, even before its supervisor has
    marked it running: a run it started may end first)."""

    def __init__(self) -> None:
        self.core: BatchCore | None = None
        self.lane: FactoryLane | None = None
        self.current: BatchActor | None = None
        self.closed = False

    def report(self, message: Any) -> bool:
        """A run's outcome, to the newest incarnation; False if that one has failed
        (the next one runs the batch again)."""
        actor = self.current
        if actor is None or not actor.accepting:
            return False
        actor.deliver_internal(message)
        return True

    def close(self, error: LessorError, now: float) -> int:
        """Once no incarnation will run again: fail what is left with ``error`` (so no
        submitter waits for ever) and stop the processor threads. The count failed."""
        left = 0
        self.closed = True  # runs still queued on the lane do not start
        if self.core is not None:
            core = self.core
            left = core.pending + core.in_flight_items + core.waiting_items
            for d in core.abandon(now, error):
                if type(d) is Answer:
                    answer(d.ticket, d.outcomes)
                elif type(d) is FlushDone:
                    answer(d.ticket, None)
        if self.lane is not None:
            self.lane.shutdown(LANE_STOP)
        return left


@dataclass(frozen=True, slots=True)
class _Processed:
    """A run's outcome, from the processor's thread."""

    run: int
    outcome: Any
    event: BatchEvent


@dataclass(frozen=True, slots=True)
class StartDrain:
    """Shutdown begins: run every item as soon as a slot is free."""


@dataclass(frozen=True, slots=True)
class AwaitIdle:
    """Set ``done`` once nothing accepted is without an outcome."""

    done: Event


@dataclass(frozen=True, slots=True)
class FailOutstanding:
    """The deadline passed: fail what is left with ``error``; answered with the count."""

    error: LessorError


class BatchActor(LessorActor):
    """One batcher. Start it with ``runtime.add_batcher(spec)``; use it through a Batcher."""

    lessor_kind = "batcher"

    def __init__(
        self,
        spec: BatchSpec,
        *,
        lineage: BatchLineage | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        scheduler: Scheduler | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self._lineage = lineage or BatchLineage()
        self._events = events
        self._clock = clock
        self._scheduler = scheduler
        self._timer: Timer | None = None
        self._on_holder_gone: Callable[[Holder], None] | None = None
        self._restarted = self._lineage.core is not None
        self.core = self._lineage.core or BatchCore(spec.settings)
        self._lineage.core = self.core
        if self._lineage.lane is None:
            lane = process_factory_threads().lane(spec.max_in_flight, f"batch:{spec.name}")
            self._lineage.lane = lane
        self._lane = self._lineage.lane
        self._lineage.current = self  # (its mailbox holds reports until its start turn)
        self._idle_waiters: list[Event] = []

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        ref = self.actor_ref
        self._timer = (self._scheduler or process_scheduler()).timer(lambda: ref.tell(_TICK))
        self._on_holder_gone = lambda holder: ref.tell(HolderGone(holder))
        holders.subscribe(self._on_holder_gone)
        self.in_turn(self._start)

    def _start(self) -> None:
        if self._restarted:  # runs of the last incarnation may never report: again
            self._apply(self.core.restarted(self._clock()))
        self._arm()
        self.ready = True

    def on_stop(self) -> None:  # what it accepted stays in the lineage (see BatchLineage.close)
        self._shutdown(ActorStopped(f"batcher {self.spec.name!r} is stopped"))

    def on_failure(self, *_exc_info: Any) -> None:
        self._shutdown(ActorRestarted(f"batcher {self.spec.name!r} failed; restarting"))

    def _shutdown(self, error: LessorError) -> None:
        if self._on_holder_gone is not None:
            holders.unsubscribe(self._on_holder_gone)
        if self._timer is not None:
            self._timer.cancel()
        self.in_turn(self.close_mailbox, error)

    # -- messages ----------------------------------------------------------------------

    def handle_call(self, call: Call) -> Any:
        msg, core, now = call.message, self.core, self._clock()
        if (to := getattr(msg, "batcher", self.spec.name)) != self.spec.name:
            raise ProtocolError(
                f"{type(msg).__name__} for {to!r} sent to batcher {self.spec.name!r}"
            )
        match msg:
            case Submit(_, items, timeout, results):
                wait = self.spec.submit_timeout if timeout is None else timeout
                self._apply(core.submit(now, call.reply, call.holder, items, wait, results))
                result: Any = DEFERRED
            case FlushBatcher():
                self._apply(core.flush(now, call.reply))
                result = DEFERRED
            case GetStats():
                result = self.stats()
            case _:
                return super().handle_call(call)
        self._arm()
        return result

    def handle_internal(self, message: Any) -> Any:
        now, core = self._clock(), self.core
        match message:
            case _Processed(run, outcome, event):
                self._apply(core.done(now, run, outcome), event)
            case Tick():
                self._apply(core.tick(now))
            case HolderGone(holder) if holder.kind == "worker":
                core.holder_gone(holder)
            case HolderGone():
                pass  # a thread's futures stay with whoever holds them
            case StartDrain():
                self._apply(core.drain(now))
            case AwaitIdle(done):
                self._idle_waiters.append(done)
            case FailOutstanding(error):
                left = core.pending + core.in_flight_items + core.waiting_items
                self._apply(core.abandon(now, error))
                self._arm()
                self._wake_idle()
                return left
            case _:
                return super().handle_internal(message)
        self._arm()
        self._wake_idle()
        return None

    # -- carrying out decisions --------------------------------------------------------

    def _apply(self, decisions: list[Decision], ran: BatchEvent | None = None) -> None:
        for d in decisions:
            if type(d) is Answer:
                self.reply(d.ticket, d.outcomes)
            elif type(d) is Run:
                self.later(self._lane.submit, self._process, d)
            elif type(d) is Finished:
                self.later(self._finished, d, ran)
            elif type(d) is FlushDone:
                self.reply(d.ticket, None)

    def _process(self, run: Run) -> None:
        """On a processor thread: run the batch and report its outcome."""
        spec = self.spec
        if self._lineage.closed:  # its items failed already (RuntimeStopped)
            return
        event = BatchEvent(spec.name, run.run, len(run.items), run.attempt, run.reason)
        _hook(spec.on_batch_start, event)
        began = time.perf_counter()
        try:
            outcome: Any = spec.processor(run.items)
        except BaseException as exc:  # the batch failed; the core decides
            outcome = exc
        event = BatchEvent(spec.name, run.run, len(run.items), run.attempt, run.reason,
                           duration_s=time.perf_counter() - began)  # fmt: skip
        if not self._lineage.report(_Processed(run.run, outcome, event)):
            log.warning("batcher %r: run %d ended with no batcher to take it (it runs again)",
                        spec.name, run.run)  # fmt: skip

    def _finished(self, done: Finished, ran: BatchEvent | None) -> None:
        spec = self.spec
        if done.result != "ok":
            log.warning("batcher %r: a batch of %d failed (%s): %r",
                        spec.name, done.size, done.result, done.error)  # fmt: skip
        if ran is not None and spec.on_batch_complete is not None:
            event = BatchEvent(spec.name, ran.run, ran.size, ran.attempt, ran.reason,
                               done.result, done.error, ran.duration_s)  # fmt: skip
            _hook(spec.on_batch_complete, event)
        for item, error in done.failed:
            _hook(spec.on_item_error, item, error)
        if done.result == "failed" and self._events is not None:
            self._events.emit("batch_failed", spec.name, f"{done.size} items: {done.error!r}")

    def _arm(self) -> None:
        timer, due = self._timer, self.core.next_deadline()
        if timer is not None and due is not None and due < timer.due:
            timer.schedule(due)

    def _wake_idle(self) -> None:
        if self._idle_waiters and self.core.idle:
            waiters, self._idle_waiters = self._idle_waiters, []
            for done in waiters:
                self.later(done.set)

    # -- what callers read -------------------------------------------------------------

    def stats(self) -> BatcherStats:
        core, t = self.core, self.core.totals
        p50, p95, p99 = (s * 1000 for s in core.latency.percentiles(0.5, 0.95, 0.99))
        reasons = t.reasons
        return BatcherStats(
            self.spec.name, t.accepted, t.completed, t.failed, t.batches,
            t.batched_items / t.batches if t.batches else 0.0, t.retries, t.bisections,
            t.backpressure, t.results_dropped, t.put_errors, t.abandoned, core.pending,
            core.in_flight_items, core.waiting_items, reasons.get("size", 0),
            reasons.get("time", 0), reasons.get("manual", 0), reasons.get("shutdown", 0),
            p50, p95, p99,
        )  # fmt: skip


def _hook(hook: Callable[..., object] | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        log.exception("a batcher hook failed")
