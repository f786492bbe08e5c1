"""GroupOutcome: how one worker group ended, for ``Runtime.join`` and ``Runtime.map``.

The group reports into it (it is the group's ``outcome``) and callers wait on it
without asking the group's actor, which may be gone by then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from lessor.errors import LessorError

__all__ = ["GroupOutcome"]


class GroupOutcome:
    """Settled once, and readable by anyone without asking the group.

    ``finished``: every worker exited for good. ``error``: why it ended first instead
    (WorkersFailed when it gave up, could not start or was stopped; RuntimeStopped
    when its runtime shut down).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settled = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self.finished = False
        self.error: LessorError | None = None

    def finish(self) -> None:
        self._settle(lambda: setattr(self, "finished", True))

    def fail(self, error: LessorError) -> None:
        self._settle(lambda: setattr(self, "error", error))

    def wait(self, timeout: float | None = None) -> bool:
        return self._settled.wait(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """``Runtime.join``: True once finished, False at the timeout, else the error raised."""
        if not self.wait(timeout):
            return False
        if self.error is not None:
            raise self.error.with_traceback(None)
        return True

    def when_settled(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once settled (now, if it already is)."""
        with self._lock:
            if not self._settled.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _settle(self, record: Callable[[], None]) -> None:
        with self._lock:
            if self._settled.is_set():
                return
            record()
            self._settled.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
