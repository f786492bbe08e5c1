"""What :class:`~lessor.core.memory.MemoryCore` reads (samples) and decides (decisions)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MACHINE",
    "MB",
    "RUNTIME",
    "Decision",
    "LeakChanged",
    "LevelChanged",
    "ProcessSample",
    "Recycle",
    "RunCleanup",
    "SetAdmission",
    "SystemSample",
]

#: A megabyte, as leak slopes count it.
MB = 1_000_000
#: The key of the machine as a whole, in decisions and stats.
MACHINE = "machine"
#: The key of the runtime's own process.
RUNTIME = "runtime"


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process, read now. ``key`` names it for as long as it lives (a worker id, or
    ``RUNTIME``); ``holder`` is the holder its pools know it as ("" for the runtime)."""

    key: str
    pid: int
    rss: int
    uss: int | None = None
    holder: str = ""


@dataclass(frozen=True, slots=True)
class SystemSample:
    """The machine, read now (bytes). With a cgroup limit, usage and limit are the cgroup's."""

    total: int
    available: int
    cgroup_limit: int | None = None
    cgroup_usage: int | None = None

    @property
    def limit(self) -> int:
        """The memory this machine (or container) may use."""
        if self.cgroup_limit is not None:
            return min(self.total, self.cgroup_limit)
        return self.total

    @property
    def used(self) -> int:
        if self.cgroup_limit is not None and self.cgroup_usage is not None:
            return self.cgroup_usage
        return max(0, self.total - self.available)


@dataclass(frozen=True, slots=True)
class LevelChanged:
    """``key`` (a process, or MACHINE) moved from ``previous`` to ``level``."""

    key: str
    previous: str
    level: str
    used: int
    limit: int


@dataclass(frozen=True, slots=True)
class LeakChanged:
    """``key``'s growth slope crossed the leak threshold (up: ``leaking``) or fell back."""

    key: str
    leaking: bool
    slope_mb_per_min: float


@dataclass(frozen=True, slots=True)
class RunCleanup:
    """Run ``key``'s cleanup handlers (in the runtime, or pushed to the worker)."""

    key: str
    why: str


@dataclass(frozen=True, slots=True)
class SetAdmission:
    """Pools grant ``holder`` (process ``key``) no new lease (``paused``) or do again;
    ``key`` and ``holder`` "" are everyone (the machine's pressure)."""

    key: str
    holder: str
    paused: bool
    why: str


@dataclass(frozen=True, slots=True)
class Recycle:
    """Drain worker ``key`` and start a fresh one in its place."""

    key: str
    why: str


Decision = LevelChanged | LeakChanged | RunCleanup | SetAdmission | Recycle
