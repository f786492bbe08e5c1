"""One deadline thread for every actor of a runtime, so no actor ever sleeps.

Each actor holds a :class:`Timer`. Its owner reads ``due`` without a lock on the
hot path and calls ``schedule`` only when its next deadline is earlier than what
is armed, so most messages cost one float comparison. When a deadline passes, the
scheduler's thread calls the timer's ``fire`` (which only posts a wake-up to the
actor), so one slow actor never delays another's timers.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from lessor.actors.per_process import PerProcess

__all__ = ["Scheduler", "Timer", "process_scheduler"]

log = logging.getLogger("lessor.actors")

_INF = float("inf")


class Timer:
    """One actor's wake-up: ``fire()`` runs once the earliest scheduled time passes."""

    __slots__ = ("_fire", "_scheduler", "cancelled", "due")

    def __init__(self, scheduler: Scheduler, fire: Callable[[], object]) -> None:
        self._scheduler = scheduler
        self._fire = fire
        self.due = _INF
        self.cancelled = False

    def schedule(self, when: float) -> None:
        """Wake at ``when`` (monotonic seconds) unless an earlier wake-up is armed."""
        if when < self.due:
            self._scheduler._arm(self, when)

    def cancel(self) -> None:
        """The owner stopped; once no timer is left the scheduler's thread ends."""
        if not self.cancelled:
            self.cancelled = True
            self._scheduler._forget(self)


class Scheduler:
    """A heap of timers served by one daemon thread, started on first use."""

    def __init__(self, name: str = "lessor-scheduler", clock: Callable[[], float] = time.monotonic):
        self._name = name
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._timers = 0  # not cancelled: the thread runs while there are any
        self._closed = False

    def timer(self, fire: Callable[[], object]) -> Timer:
        with self._cond:
            self._timers += 1
        return Timer(self, fire)

    def _forget(self, timer: Timer) -> None:
        with self._cond:
            self._timers -= 1
            if not self._timers:
                self._cond.notify()  # the thread ends; the next arm starts another

    def _arm(self, timer: Timer, when: float) -> None:
        with self._cond:
            if when >= timer.due or self._closed or timer.cancelled:
                return
            timer.due = when
            heap = self._heap
            heapq.heappush(heap, (when, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif heap[0][2] is timer:
                self._cond.notify()

    def close(self) -> None:
        """Stop the thread; timers armed later never fire."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        cond, heap = self._cond, self._heap
        while True:
            with cond:
                while True:
                    if self._closed or not self._timers:
                        self._thread = None
                        return
                    if heap:
                        when, _, timer = heap[0]
                        if timer.cancelled or when != timer.due:
                            heapq.heappop(heap)  # re-armed earlier, or cancelled
                            continue
                        delay = when - self._clock()
                        if delay <= 0:
                            heapq.heappop(heap)
                            timer.due = _INF
                            break
                        cond.wait(delay)
                    else:
                        cond.wait()
            try:
                timer._fire()
            except Exception:  # the owner is gone; it cancels its timer
                log.debug("a timer's owner refused its wake-up", exc_info=True)


_per_process: PerProcess[Scheduler] = PerProcess(lambda: Scheduler("lessor-scheduler"))


def process_scheduler() -> Scheduler:
    """The scheduler of every actor in this process (one deadline thread)."""
    return _per_process.get()
