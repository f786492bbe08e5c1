"""A deadline timer that wakes an actor by message, so the actor never sleeps.

The owner reads ``due`` without the lock on its hot path and calls ``schedule``
only when the core's next deadline is earlier than what is armed: most messages
cost one float comparison.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["DeadlineTimer"]

_INF = float("inf")


class DeadlineTimer:
    """Calls ``fire()`` on its own thread once the earliest scheduled time passes."""

    def __init__(
        self, fire: Callable[[], object], name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fire = fire
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self.due = _INF
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def schedule(self, when: float) -> None:
        with self._cond:
            if when < self.due:
                self.due = when
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    if self._closed:
                        return
                    delay = self.due - self._clock()
                    if delay <= 0:
                        self.due = _INF
                        break
                    cond.wait(None if delay == _INF else delay)
            try:
                self._fire()
            except Exception:  # the owner is gone; it will close us
                return
