"""One shared object per process, made on first use, and made again in a forked child.

The scheduler and the factory threads are shared by every actor of a process; their
threads do not cross a fork, so a child must not inherit the parent's objects.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess"]

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``get()`` returns this process's one ``make()``."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._value: T | None = None
        os.register_at_fork(after_in_child=self._forget)

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value

    def _forget(self) -> None:
        self._lock = threading.Lock()  # (another thread may have held it at the fork)
        self._value = None
