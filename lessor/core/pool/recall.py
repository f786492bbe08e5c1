"""Recall: asking holders to give back leases they hold but do not use.

A worker process caches leases it has finished with (parked, HikariCP's
ConcurrentBag), so a pool can be starved (Acquires wait, nothing idle, no room to
make more) while some of its leases sit unused in a worker or an in-process
cache. Only holders that keep leases they can give back (``Holder.gives_back``:
workers and caches) are asked (``AskBack``); threads and actors use what they hold. The
first ask goes out as soon as the pool is starved, the next ones every
``RECALL_INTERVAL`` while it stays starved. If there is nobody to ask, nothing is
scheduled: the next call that finds the pool starved looks again.
"""

from __future__ import annotations

from collections.abc import Callable

from lessor.core.decisions import AskBack, Decision
from lessor.holder import Holder

__all__ = ["RECALL_INTERVAL", "Recall", "gives_back"]

#: While the pool is starved, holders that can give leases back are asked this often (s).
RECALL_INTERVAL = 0.05


def gives_back(holder: Holder) -> bool:
    # A holder known only by its text (its sender does not type holders) is never asked.
    return isinstance(holder, Holder) and holder.gives_back


class Recall:
    """When the pool last asked for leases back, and when it asks next."""

    __slots__ = ("alarm", "asked_at", "due")

    def __init__(self) -> None:
        #: The last AskBack of the current starved spell (None: not starved, or none yet).
        self.asked_at: float | None = None
        #: When to ask again (for ``next_deadline``); None if nobody was asked.
        self.due: float | None = None
        self.alarm = float("inf")  # the earliest ``due`` set since the owner last looked

    def stop(self) -> None:
        """Not starved any more: the next starved spell asks at once."""
        self.asked_at = self.due = None

    def update(self, now: float, holders: Callable[[], list[Holder]], out: list[Decision]) -> None:
        """The pool is starved: ask if no ask went out in the last interval."""
        asked = self.asked_at
        if asked is not None and now < asked + RECALL_INTERVAL:
            return
        givers = tuple(h for h in holders() if gives_back(h))
        if givers:
            out.append(AskBack(givers))
            self.asked_at = now
            self.due = now + RECALL_INTERVAL
            self.alarm = min(self.alarm, self.due)
        else:
            self.due = None
