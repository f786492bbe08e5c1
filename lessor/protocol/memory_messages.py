"""The memory manager's messages (tags 29-31); import them from :mod:`lessor.protocol.messages`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lessor.protocol.codec import _FIELDS, Message, message

__all__ = ["Admission", "Cleanup", "MemoryStats"]


@message(29)
@dataclass(frozen=True, slots=True)
class Admission(Message):
    """Pause (or resume) new grants to ``holder``; ``holder`` "" means everyone.

    The memory manager sends it to every pool of the runtime, which then keeps that
    holder's Acquires queued (leases already granted stay valid), and pushes it to
    the paused worker, which stops parking leases and pauses its own pools. Pools
    refuse it from a worker: only the runtime decides admission.
    """

    holder: str
    paused: bool
    why: str = ""


@message(30)
@dataclass(frozen=True, slots=True)
class Cleanup(Message):
    """Pushed to a worker near its memory limit: run the cleanup handlers registered
    in that process (``lessor.register_cleanup``)."""

    why: str


@message(31)
@dataclass(frozen=True, slots=True)
class MemoryStats(Message):
    """The memory manager now: bytes, fractions, MB per minute.

    ``machine`` has ``cpus``, ``total``, ``available``, ``limit``, ``used``,
    ``cgroup_limit`` and ``level``; each of ``processes`` has ``key``, ``pid``,
    ``holder``, ``rss``, ``uss``, ``peak``, ``limit``, ``fraction``, ``level``,
    ``slope_mb_per_min``, ``leaking``, ``paused`` and ``recycling``. ``recycled``
    lists ``[worker, why]``, newest last; ``events`` the recent memory events as
    ``[seconds ago, kind, subject, detail]``.
    """

    machine: dict[str, Any]
    processes: list[dict[str, Any]]
    paused_all: bool
    paused: list[str]
    recycled: list[list[str]]
    events: list[list[Any]]
    samples: int
    warnings: int
    cleanups: int
    pauses: int
    resumes: int
    recycles: int
    leaks: int
    sample_us_mean: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS[MemoryStats]}
