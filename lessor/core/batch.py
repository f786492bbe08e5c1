"""BatchCore: one batch processor's bookkeeping, pure (time comes in as ``now``).

Submitters hand in items (a *submission* is one or more items with one answer);
the core accepts them up to ``max_pending`` queued items, groups them into batches
and decides when each batch runs (:class:`Run`), is retried, is split, or is done.
The actor carries out its decisions: it runs the processor off the turn and
brings its outcome back with :meth:`BatchCore.done`.

**Order.** Items are accepted in the order they arrive (a submission that has to
wait holds back every later one) and batched in that order. With
``max_in_flight=1`` each batch, its retries and its bisection halves included,
finishes before the next one starts, so the processor sees items in acceptance
order. With more in flight, batches may run and finish in any order.

**Failure.** A per-item error (an exception in the processor's result list) is
final for that item. A batch whose processor raised, or returned the wrong number
of results, is run again after ``retry_backoff`` seconds (doubling, at most
``retry_backoff_max``) up to ``max_attempts`` runs. If it still fails and holds
more than one item, ``bisect`` splits it in halves that run once each and split
again when they fail, so a poison item fails alone and the rest succeed. A
batch's slot stays taken while it waits for its retry (that is what keeps the
order above).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from lessor.core.batch_decisions import (
    Answer,
    BatchSettings,
    BatchTotals,
    Decision,
    Finished,
    FlushDone,
    FlushReason,
    ProcessorError,
    Run,
    check_outcome,
)
from lessor.core.samples import Samples
from lessor.errors import Backpressure

__all__ = [
    "Answer",
    "BatchCore",
    "BatchSettings",
    "BatchTotals",
    "Decision",
    "Finished",
    "FlushDone",
    "FlushReason",
    "ProcessorError",
    "Run",
    "check_outcome",
]

_PENDING: Any = object()  # an item's outcome, until it has one


class _Submission:
    """Items handed in together, answered together once each has its outcome."""

    __slots__ = ("deadline", "holder", "items", "left", "outcomes", "taken", "ticket",
                 "wants_results")  # fmt: skip

    def __init__(
        self, ticket: Any, holder: str, items: list[Any], deadline: float, wants_results: bool
    ) -> None:
        self.ticket = ticket  # None: nobody waits for the answer (or its submitter died)
        self.holder = holder
        self.wants_results = wants_results
        self.items = items
        self.outcomes: list[Any] = [_PENDING] * len(items)
        self.left = len(items)  # items without an outcome
        self.taken = 0  # items accepted so far (the rest wait for room)
        self.deadline = deadline  # for the items still waiting for room


class _Entry:
    """One accepted item."""

    __slots__ = ("accepted_at", "index", "seq", "sub")

    def __init__(self, seq: int, sub: _Submission, index: int, now: float) -> None:
        self.seq = seq
        self.sub = sub
        self.index = index
        self.accepted_at = now


@dataclass(eq=False)
class _Batch:
    entries: list[_Entry]
    reason: FlushReason
    attempt: int = 0  # runs so far
    budget: int = 1  # runs it may have before it is split or fails
    run: int = 0  # the id of its current run


class BatchCore:
    """One batcher's queue, batches and waiters. Not thread-safe: the actor's turn owns it."""

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self.queue: deque[_Entry] = deque()  # accepted, not in a batch yet
        self.waiting: deque[_Submission] = deque()  # items waiting for room, in order
        self.running: dict[int, _Batch] = {}
        self.retrying: list[tuple[float, _Batch]] = []  # (due, batch): they keep their slot
        self.ready: deque[_Batch] = deque()  # bisection halves, before any new batch
        self.flushes: list[tuple[Any, int, list[int]]] = []  # (ticket, seq mark, [items left])
        self.totals = BatchTotals()
        self.latency = Samples()  # seconds from acceptance to outcome, per item
        self.draining = False
        self._seq = 0
        self._runs = 0
        self._flush_mark = 0  # items up to this seq are flushed whatever their age

    # -- what callers do ---------------------------------------------------------------

    def submit(
        self,
        now: float,
        ticket: Any,
        holder: str,
        items: list[Any],
        timeout: float,
        wants_results: bool = True,
    ) -> list[Decision]:
        """Hand in ``items``; those without room wait up to ``timeout`` seconds for it.

        ``wants_results=False`` (a put): failed items are counted as ``put_errors``.
        """
        sub = _Submission(ticket, holder, items, now + timeout, wants_results)
        out: list[Decision] = []
        if not items:
            if ticket is not None:
                out.append(Answer(ticket, []))
            return out
        self.waiting.append(sub)
        self._admit(now)
        self._schedule(now, out)
        return out

    def flush(self, now: float, ticket: Any) -> list[Decision]:
        """Run every accepted item now, whatever its age; FlushDone once all have outcomes."""
        out: list[Decision] = []
        self._flush_mark = self._seq
        left = self.pending + self.in_flight_items
        if left:
            self.flushes.append((ticket, self._seq, [left]))
        else:
            out.append(FlushDone(ticket))
        self._schedule(now, out)
        return out

    def drain(self, now: float) -> list[Decision]:
        """Shutting down: every item runs as soon as a slot is free."""
        self.draining = True
        out: list[Decision] = []
        self._schedule(now, out)
        return out

    def done(self, now: float, run: int, outcome: Any) -> list[Decision]:
        """The processor's outcome for ``run``: a result list, or the exception it raised."""
        out: list[Decision] = []
        batch = self.running.pop(run, None)
        if batch is None:  # a run from before a restart, or abandoned at shutdown
            return out
        size = len(batch.entries)
        result = check_outcome(outcome, size)
        if isinstance(result, list):
            failed = [(self._item(e), r) for e, r in zip(batch.entries, result, strict=True)
                      if isinstance(r, BaseException)]  # fmt: skip
            self._count_run(batch, "ok", None, failed, out)
            for entry, value in zip(batch.entries, result, strict=True):
                self._outcome(now, entry, value, out)
        elif batch.attempt < batch.budget:
            self.totals.retries += 1
            self._count_run(batch, "retry", result, [], out)
            backoff = self.settings.retry_backoff * 2 ** (batch.attempt - 1)
            self.retrying.append((now + min(backoff, self.settings.retry_backoff_max), batch))
        elif self.settings.bisect and size > 1:
            self.totals.bisections += 1
            self._count_run(batch, "bisect", result, [], out)
            half = size // 2
            self.ready.extendleft([_Batch(batch.entries[half:], "bisect"),
                                   _Batch(batch.entries[:half], "bisect")])  # fmt: skip
        else:
            failed = [(self._item(e), result) for e in batch.entries]
            self._count_run(batch, "failed", result, failed, out)
            for entry in batch.entries:
                self._outcome(now, entry, result, out)
        self._schedule(now, out)
        return out

    def tick(self, now: float) -> list[Decision]:
        """Time passed: batches due by age, retries due, submissions out of time."""
        out: list[Decision] = []
        if self.retrying:
            due = [b for t, b in self.retrying if t <= now]
            if due:
                self.retrying = [(t, b) for t, b in self.retrying if t > now]
                for batch in due:
                    self._start(batch, "retry", out)
        if self.waiting and any(s.deadline <= now for s in self.waiting):
            for sub in [s for s in self.waiting if s.deadline <= now]:
                self.waiting.remove(sub)
                refused = Backpressure(
                    f"no room in the batcher's queue (max_pending={self.settings.max_pending})"
                )
                for index in range(sub.taken, len(sub.items)):
                    self.totals.backpressure += 1
                    self._settle(sub, index, refused, out)
            self._admit(now)
        self._schedule(now, out)
        return out

    def holder_gone(self, holder: str) -> None:
        """A submitter process died: what it had accepted still runs, its answers are dropped,
        and what was still waiting for room was never accepted, so it goes."""
        for sub in [s for s in self.waiting if s.holder == holder]:
            self.waiting.remove(sub)
            sub.left -= len(sub.items) - sub.taken
            sub.items = sub.items[: sub.taken]
        for sub in self._submissions(holder):
            sub.ticket, sub.holder = None, ""
            self.totals.results_dropped += sub.left

    def restarted(self, now: float) -> list[Decision]:
        """A new incarnation of the actor: runs of the last one may never report, so they
        run again (delivery is at least once)."""
        out: list[Decision] = []
        for batch in list(self.running.values()):
            del self.running[batch.run]
            self._start(batch, batch.reason, out, count=False)
        self._schedule(now, out)
        return out

    def abandon(self, now: float, error: BaseException) -> list[Decision]:
        """The end: every item without an outcome fails with ``error``, runs or not."""
        out: list[Decision] = []
        entries = [e for b in self.running.values() for e in b.entries]
        entries += [e for _, b in self.retrying for e in b.entries]
        entries += [e for b in self.ready for e in b.entries] + list(self.queue)
        self.running.clear()
        self.retrying.clear()
        self.ready.clear()
        self.queue.clear()
        for entry in entries:
            self.totals.abandoned += 1
            self._outcome(now, entry, error, out)
        for sub in list(self.waiting):
            for index in range(sub.taken, len(sub.items)):
                self._settle(sub, index, error, out)
        self.waiting.clear()
        return out

    # -- what the actor reads ----------------------------------------------------------

    @property
    def pending(self) -> int:
        """Accepted items not in a batch yet."""
        return len(self.queue)

    @property
    def in_flight_items(self) -> int:
        return (
            sum(len(b.entries) for b in self.running.values())
            + sum(len(b.entries) for _, b in self.retrying)
            + sum(len(b.entries) for b in self.ready)
        )

    @property
    def waiting_items(self) -> int:
        """Items handed in that wait for room in the queue."""
        return sum(len(s.items) - s.taken for s in self.waiting)

    @property
    def idle(self) -> bool:
        """Nothing accepted is without an outcome, and nothing waits for room."""
        return not (self.queue or self.running or self.retrying or self.ready or self.waiting)

    def next_deadline(self) -> float | None:
        """The next time :meth:`tick` has something to do."""
        times = [t for t, _ in self.retrying]
        times += [s.deadline for s in self.waiting]
        if self.queue and self._slots():
            times.append(self.queue[0].accepted_at + self.settings.max_wait)
        return min(times) if times else None

    # -- the machinery -----------------------------------------------------------------

    def _slots(self) -> int:
        return self.settings.max_in_flight - len(self.running) - len(self.retrying)

    def _admit(self, now: float) -> None:
        room = self.settings.max_pending - len(self.queue)
        waiting, queue = self.waiting, self.queue
        while waiting and room > 0:
            sub = waiting[0]
            take = min(room, len(sub.items) - sub.taken)
            for index in range(sub.taken, sub.taken + take):
                self._seq += 1
                queue.append(_Entry(self._seq, sub, index, now))
            sub.taken += take
            room -= take
            self.totals.accepted += take
            if sub.taken == len(sub.items):
                waiting.popleft()

    def _schedule(self, now: float, out: list[Decision]) -> None:
        """Start batches while slots are free: halves first, then from the queue."""
        s, queue = self.settings, self.queue
        while self._slots() > 0:
            if self.ready:
                self._start(self.ready.popleft(), "bisect", out)
                continue
            if not queue:
                break
            if len(queue) >= s.max_batch_size:
                reason: FlushReason = "size"
            elif queue[0].seq <= self._flush_mark:
                reason = "manual"
            elif self.draining:
                reason = "shutdown"
            elif now >= queue[0].accepted_at + s.max_wait:  # (as next_deadline says it)
                reason = "time"
            else:
                break
            take = min(len(queue), s.max_batch_size)
            entries = [queue.popleft() for _ in range(take)]
            self.totals.reasons[reason] = self.totals.reasons.get(reason, 0) + 1
            budget = s.max_attempts
            self._start(_Batch(entries, reason, budget=budget), reason, out)
            self._admit(now)

    def _start(
        self, batch: _Batch, reason: FlushReason, out: list[Decision], count: bool = True
    ) -> None:
        if count:
            batch.attempt += 1
        self._runs += 1
        batch.run = self._runs
        self.running[batch.run] = batch
        out.append(Run(batch.run, [self._item(e) for e in batch.entries], batch.attempt, reason))

    def _count_run(
        self,
        batch: _Batch,
        result: str,
        error: BaseException | None,
        failed: list[tuple[Any, BaseException]],
        out: list[Decision],
    ) -> None:
        self.totals.batches += 1
        self.totals.batched_items += len(batch.entries)
        out.append(Finished(batch.run, len(batch.entries), result, error, failed))

    @staticmethod
    def _item(entry: _Entry) -> Any:
        return entry.sub.items[entry.index]

    def _outcome(self, now: float, entry: _Entry, value: Any, out: list[Decision]) -> None:
        self.latency.add(now - entry.accepted_at)
        if self.flushes:
            for _, mark, left in self.flushes:
                if entry.seq <= mark:
                    left[0] -= 1
            for flush in [f for f in self.flushes if f[2][0] <= 0]:
                self.flushes.remove(flush)
                out.append(FlushDone(flush[0]))
        self._settle(entry.sub, entry.index, value, out)

    def _settle(self, sub: _Submission, index: int, value: Any, out: list[Decision]) -> None:
        if sub.outcomes[index] is not _PENDING:
            return
        sub.outcomes[index] = value
        sub.left -= 1
        totals = self.totals
        totals.completed += 1
        failed = isinstance(value, BaseException)
        if failed:
            totals.failed += 1
        if failed and not sub.wants_results:
            totals.put_errors += 1
        if sub.left == 0 and sub.ticket is not None:
            out.append(Answer(sub.ticket, sub.outcomes))

    def _submissions(self, holder: str) -> list[_Submission]:
        subs = {id(e.sub): e.sub for e in self.queue if e.sub.holder == holder}
        for batches in (self.running.values(), [b for _, b in self.retrying], self.ready):
            for batch in batches:
                for e in batch.entries:
                    if e.sub.holder == holder:
                        subs[id(e.sub)] = e.sub
        return list(subs.values())
