"""Supervisor events: to ``logging`` as structured records and into a bounded ring.

The ring is what ``lessor`` tooling and tests read (``Runtime.events()``); the
log records carry the same fields under ``record.lessor`` for log shippers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = ["Event", "EventKind", "EventLog"]

log = logging.getLogger("lessor.supervisor")

EventKind = Literal[
    "started", "failed", "exited", "restarted", "removed", "gave_up", "escalated",
    "stopped", "killed", "lease_reclaimed",
    "breaker_state",
    "batch_failed",
    "memory_level", "memory_leak", "memory_leak_over", "memory_cleanup", "memory_pause",
    "memory_resume", "memory_recycle", "recycling", "recycled",
]  # fmt: skip
_LEVELS = {"failed": logging.WARNING, "gave_up": logging.ERROR, "escalated": logging.ERROR,
           "killed": logging.WARNING, "memory_leak": logging.WARNING,
           "memory_pause": logging.WARNING, "memory_recycle": logging.WARNING}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    """``node`` is the child's path in the tree (``root/db``); ``at`` is wall-clock time."""

    at: float
    kind: EventKind
    node: str
    detail: str


class EventLog:
    """Thread-safe ring of the last ``size`` events."""

    def __init__(self, size: int = 1000) -> None:
        self._ring: deque[Event] = deque(maxlen=size)
        self._counts: dict[str, int] = {}  # every event ever, by kind
        self._lock = threading.Lock()

    def emit(self, kind: EventKind, node: str, detail: str = "") -> Event:
        event = Event(time.time(), kind, node, detail)
        with self._lock:
            self._ring.append(event)
            self._counts[kind] = self._counts.get(kind, 0) + 1
        log.log(_LEVELS.get(kind, logging.INFO), "%s %s%s", node, kind,
                f": {detail}" if detail else "",
                extra={"lessor": {"event": kind, "node": node, "detail": detail}})  # fmt: skip
        return event

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self._ring)

    def counts(self) -> dict[str, int]:
        """Events since the log was made, by kind: the ring forgets, these do not."""
        with self._lock:
            return dict(self._counts)
