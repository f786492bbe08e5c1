"""Acquires waiting for a resource: priority order, deadlines, cancellation.

A waiter is *queued* until a resource is picked for it, then *serving* while that
resource is checked (pools with a check only), then *done* (granted, failed,
timed out or cancelled). Heap entries of done waiters are dropped lazily, so
cancelling or failing a waiter is O(1).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lessor.holder import Holder

__all__ = ["DONE", "QUEUED", "SERVING", "WaitQueue", "Waiter"]

QUEUED, SERVING, DONE = 0, 1, 2


@dataclass(eq=False, slots=True)
class Waiter:
    ticket: object
    holder: Holder
    priority: int
    seq: int  # arrival order: ties in priority go first come, first served
    enqueued_at: float
    deadline: float
    timeout: float
    ttl: float | None
    state: int = QUEUED


class WaitQueue:
    """Queued waiters by ticket, best first (highest priority, then earliest).

    Waiters whose resource is being checked are kept by slot id (``serve``) until
    ``served`` hands them back; they still count as waiting and still time out.
    """

    def __init__(self) -> None:
        #: Queued waiters by ticket (read-only outside; not in priority order).
        self.queued: dict[object, Waiter] = {}
        #: The earliest deadline added since the owner last looked (PoolCore.take_alarm).
        self.alarm = float("inf")
        self._order: list[tuple[int, int, Waiter]] = []
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._serving: dict[int, Waiter] = {}  # slot id -> waiter its check is for
        self._seq = itertools.count()

    @property
    def serving(self) -> int:
        """Checks under way for a waiter, whether or not it still waits."""
        return len(self._serving)

    def claimed(self, admits: Callable[[Holder], bool]) -> int:
        """Checks under way whose resource goes to its waiter: one that still waits and
        is admitted (the others' resources come back idle)."""
        return sum(1 for w in self._serving.values() if w.state == SERVING and admits(w.holder))

    @property
    def waiting(self) -> int:
        """Everyone still waiting for an answer: queued, or their resource in a check."""
        checking = sum(1 for w in self._serving.values() if w.state == SERVING)
        return len(self.queued) + checking

    def add(
        self,
        now: float,
        ticket: object,
        holder: Holder,
        priority: int,
        timeout: float,
        ttl: float | None,
    ) -> None:
        seq = next(self._seq)
        waiter = Waiter(ticket, holder, priority, seq, now, now + timeout, timeout, ttl)
        self.queued[ticket] = waiter
        heapq.heappush(self._order, (-priority, seq, waiter))
        heapq.heappush(self._deadlines, (waiter.deadline, seq, waiter))
        self.alarm = min(self.alarm, waiter.deadline)

    def pop_best(self, admits: Callable[[Holder], bool] | None = None) -> Waiter | None:
        """Take the best queued waiter that ``admits`` lets in (any, if None) out of the
        queue; None if there is none. Waiters passed over keep their place."""
        order = self._order
        passed: list[tuple[int, int, Waiter]] = []
        try:
            while order:
                entry = heapq.heappop(order)
                waiter = entry[2]
                if waiter.state != QUEUED:
                    continue
                if admits is not None and not admits(waiter.holder):
                    passed.append(entry)
                    continue
                del self.queued[waiter.ticket]
                waiter.state = DONE
                return waiter
            return None
        finally:
            for entry in passed:
                heapq.heappush(order, entry)

    def serve(self, slot: int, waiter: Waiter) -> None:
        """``waiter`` (just popped) waits for the check of ``slot``."""
        waiter.state = SERVING
        self._serving[slot] = waiter

    def served(self, slot: int) -> Waiter | None:
        """The waiter the check of ``slot`` was for, if it still waits; it is then done."""
        waiter = self._serving.pop(slot, None)
        if waiter is None or waiter.state != SERVING:
            return None
        waiter.state = DONE
        return waiter

    def requeue(self, waiter: Waiter) -> None:
        """Back in its old place (its check failed); its deadline entry never left."""
        waiter.state = QUEUED
        self.queued[waiter.ticket] = waiter
        heapq.heappush(self._order, (-waiter.priority, waiter.seq, waiter))

    def cancel(self, ticket: object) -> None:
        """Forget ``ticket``, queued or in a check (the check's resource then goes idle)."""
        waiter = self.queued.pop(ticket, None)
        if waiter is not None:
            waiter.state = DONE
            return
        for waiter in self._serving.values():
            if waiter.ticket == ticket:
                waiter.state = DONE

    def expire(self, now: float) -> Iterator[Waiter]:
        """Waiters whose deadline is ``now`` or earlier; each is done once yielded."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            waiter = heapq.heappop(deadlines)[2]
            if waiter.state != DONE:
                self.queued.pop(waiter.ticket, None)
                waiter.state = DONE
                yield waiter

    def next_deadline(self) -> float | None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].state == DONE:
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    def take_all(self) -> list[Waiter]:
        """Every waiter still waiting, now done (to fail them all)."""
        waiters = [w for w in (*self.queued.values(), *self._serving.values()) if w.state != DONE]
        for waiter in waiters:
            waiter.state = DONE
        self.queued.clear()
        return waiters

    def take_holder(self, holder: str) -> list[Waiter]:
        """Every waiter of ``holder`` still waiting, now done (its holder is gone)."""
        waiters = [
            w
            for w in (*self.queued.values(), *self._serving.values())
            if w.holder == holder and w.state != DONE
        ]
        for waiter in waiters:
            self.queued.pop(waiter.ticket, None)
            waiter.state = DONE
        return waiters
