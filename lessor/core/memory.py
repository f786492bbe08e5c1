"""MemoryCore: memory levels, leaks and actions as a pure state machine.

The owner samples (psutil, on an interval) and calls :meth:`MemoryCore.observe`
with what it read and the time; the core returns decisions (see
:mod:`lessor.core.memory_decisions`) and keeps what it needs to judge the next
sample. No threads, no I/O, no clock.

**Levels.** Each process has a level (``ok``, ``warn``, ``cleanup``, ``pause``,
``restart``), from its RSS as a fraction of its limit, and so has the machine, from
the memory in use as a fraction of what it may use. A level is entered when the
fraction reaches its threshold and left only once the fraction is ``hysteresis``
below it (:func:`next_level`), so nothing flaps at a threshold.

**Actions.** Entering ``cleanup`` (and every ``cleanup_interval`` while at or above
it) runs the process's cleanup handlers; ``pause`` stops pools granting it new
leases until it is back below the resume level, and recycles it if it is not within
``max_pause``; ``restart`` recycles it, once. On
the machine, ``pause`` stops pools granting anyone and ``restart`` recycles the
largest worker, one at a time. The runtime's own process is never paused or
recycled: only its cleanup handlers run.

**Leaks.** A process's RSS is kept at up to 64 points per ``leak_window``; once
the points span half the window, the least-squares slope (MB per minute) flags the
process as leaking at ``leak_mb_per_min`` and clears it below half of that, whatever
its level.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from lessor.core.memory_decisions import (
    MACHINE,
    MB,
    Decision,
    LeakChanged,
    LevelChanged,
    ProcessSample,
    Recycle,
    RunCleanup,
    SetAdmission,
    SystemSample,
)
from lessor.specs.memory import LEAK_SAMPLES, LEVELS, MemorySpec, Thresholds

__all__ = ["MemoryCore", "MemoryTotals", "Watched", "level_for", "next_level", "slope"]

WARN, CLEANUP, PAUSE, RESTART = 1, 2, 3, 4
#: Points kept per leak window, and the fewest a slope is fitted to.
POINTS_PER_WINDOW, MIN_POINTS = 64, LEAK_SAMPLES
#: How many recycled workers the core remembers for stats.
HISTORY = 100


def level_for(thresholds: Thresholds, fraction: float) -> int:
    """The highest level whose threshold ``fraction`` reaches (0: ``ok``)."""
    level = 0
    for index, (_, threshold) in enumerate(thresholds.levels(), 1):
        if threshold is not None and fraction >= threshold:
            level = index
    return level


def next_level(thresholds: Thresholds, current: int, fraction: float) -> int:
    """Up at once to the level reached; down only as far as ``hysteresis`` allows."""
    reached = level_for(thresholds, fraction)
    if reached >= current:
        return reached
    return min(current, level_for(thresholds, fraction + thresholds.hysteresis))


def slope(points: Iterable[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) points, in bytes per second."""
    pts = list(points)
    n = len(pts)
    mean_t = sum(t for t, _ in pts) / n
    mean_y = sum(y for _, y in pts) / n
    var = sum((t - mean_t) ** 2 for t, _ in pts)
    if var <= 0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in pts) / var


@dataclass(eq=False)
class Watched:
    """What the core knows of one process (or the machine, as MACHINE)."""

    key: str
    pid: int = 0
    holder: str = ""
    rss: int = 0
    uss: int | None = None
    peak: int = 0
    limit: int | None = None
    level: int = 0
    slope_mb_per_min: float | None = None
    leaking: bool = False
    paused: bool = False
    paused_at: float = 0.0
    recycling: str = ""  # why, once asked to recycle
    last_cleanup: float = -math.inf
    points: deque[tuple[float, int]] = field(default_factory=deque)

    @property
    def level_name(self) -> str:
        return LEVELS[self.level]

    @property
    def fraction(self) -> float | None:
        return None if not self.limit else self.rss / self.limit


@dataclass
class MemoryTotals:
    """Counts since the memory manager started."""

    samples: int = 0
    warnings: int = 0
    cleanups: int = 0
    pauses: int = 0
    resumes: int = 0
    recycles: int = 0
    leaks: int = 0


class MemoryCore:
    """The memory manager's decisions, from samples and the time."""

    def __init__(self, spec: MemorySpec) -> None:
        self.spec = spec
        self.totals = MemoryTotals()
        self.processes: dict[str, Watched] = {}
        self.machine = Watched(MACHINE)
        self.system: SystemSample | None = None
        self.paused_all = False
        #: (key, why) of the workers asked to recycle, newest last.
        self.recycled: deque[tuple[str, str]] = deque(maxlen=HISTORY)

    @property
    def paused(self) -> list[str]:
        """Holders whose admission is paused now."""
        return sorted(w.holder for w in self.processes.values() if w.paused)

    def observe(
        self, now: float, system: SystemSample, processes: Iterable[ProcessSample]
    ) -> list[Decision]:
        """Judge one sample of the machine and every process watched.

        A process missing from ``processes`` is gone: its pause, if any, is lifted.
        """
        out: list[Decision] = []
        spec = self.spec
        self.system = system
        self.totals.samples += 1
        limit = spec.limit(system.limit)
        seen: set[str] = set()
        for sample in processes:
            seen.add(sample.key)
            watched = self.processes.get(sample.key)
            if watched is None:
                watched = self.processes[sample.key] = Watched(sample.key)
            watched.pid, watched.holder, watched.rss = sample.pid, sample.holder, sample.rss
            if sample.uss is not None:
                watched.uss = sample.uss
            watched.peak = max(watched.peak, sample.rss)
            watched.limit = limit
            self._leak(now, watched, out)
            if limit:
                self._judge(now, watched, sample.rss / limit, out)
        for key in [k for k in self.processes if k not in seen]:
            gone = self.processes.pop(key)
            if gone.paused:
                self.totals.resumes += 1
                out.append(SetAdmission(key, gone.holder, False, f"{key} is gone"))
        if spec.machine is not None and system.limit > 0:
            self._judge_machine(now, spec.machine, system, out)
        return out

    # -- one process -------------------------------------------------------------------

    def _judge(self, now: float, w: Watched, fraction: float, out: list[Decision]) -> None:
        thresholds = self.spec.thresholds
        previous, level = w.level, next_level(thresholds, w.level, fraction)
        assert w.limit is not None
        if level != previous:
            w.level = level
            out.append(LevelChanged(w.key, LEVELS[previous], LEVELS[level], w.rss, w.limit))
            if level > previous and level >= WARN:
                self.totals.warnings += 1
        why = f"RSS {w.rss / MB:.0f} MB is {fraction:.0%} of its {w.limit / MB:.0f} MB limit"
        if level >= CLEANUP and (previous < CLEANUP or self._cleanup_due(now, w)):
            self._cleanup(now, w, why, out)
        if not w.holder:  # the runtime itself: nothing more can be done to it
            return
        if level >= PAUSE and not w.paused:
            w.paused, w.paused_at = True, now
            self.totals.pauses += 1
            out.append(SetAdmission(w.key, w.holder, True, why))
        elif level < PAUSE and w.paused:
            w.paused = False
            self.totals.resumes += 1
            out.append(SetAdmission(w.key, w.holder, False, why))
        if level >= RESTART and not w.recycling:
            self._recycle(w, why, out)
        elif w.paused and not w.recycling and self._paused_too_long(now, w):
            self._recycle(w, f"paused {now - w.paused_at:.1f}s and still: {why}", out)

    def _paused_too_long(self, now: float, w: Watched) -> bool:
        max_pause = self.spec.max_pause
        return max_pause is not None and now - w.paused_at >= max_pause

    def _cleanup_due(self, now: float, w: Watched) -> bool:
        return now - w.last_cleanup >= self.spec.cleanup_interval

    def _cleanup(self, now: float, w: Watched, why: str, out: list[Decision]) -> None:
        w.last_cleanup = now
        self.totals.cleanups += 1
        out.append(RunCleanup(w.key, why))

    def _recycle(self, w: Watched, why: str, out: list[Decision]) -> None:
        w.recycling = why
        self.totals.recycles += 1
        self.recycled.append((w.key, why))
        out.append(Recycle(w.key, why))

    def _leak(self, now: float, w: Watched, out: list[Decision]) -> None:
        threshold, window = self.spec.leak_mb_per_min, self.spec.leak_window
        if threshold is None:
            return
        points = w.points
        if not points or now - points[-1][0] >= window / POINTS_PER_WINDOW:
            points.append((now, w.rss))
        while points and points[0][0] < now - window:
            points.popleft()
        if len(points) < MIN_POINTS or points[-1][0] - points[0][0] < window / 2:
            return
        rate = slope(points) * 60 / MB
        w.slope_mb_per_min = rate
        if not w.leaking and rate >= threshold:
            w.leaking = True
            self.totals.leaks += 1
            out.append(LeakChanged(w.key, True, rate))
        elif w.leaking and rate < threshold / 2:
            w.leaking = False
            out.append(LeakChanged(w.key, False, rate))

    # -- the machine -------------------------------------------------------------------

    def _judge_machine(
        self, now: float, thresholds: Thresholds, system: SystemSample, out: list[Decision]
    ) -> None:
        m = self.machine
        m.rss, m.limit = system.used, system.limit
        m.peak = max(m.peak, system.used)
        fraction = system.used / system.limit
        previous, level = m.level, next_level(thresholds, m.level, fraction)
        if level != previous:
            m.level = level
            out.append(LevelChanged(MACHINE, LEVELS[previous], LEVELS[level], m.rss, m.limit))
            if level > previous and level >= WARN:
                self.totals.warnings += 1
        why = f"the machine uses {fraction:.0%} of its {system.limit / MB:.0f} MB"
        if level >= CLEANUP and (previous < CLEANUP or self._cleanup_due(now, m)):
            m.last_cleanup = now
            for w in self.processes.values():
                if self._cleanup_due(now, w):  # (not one cleaned just now, for itself)
                    self._cleanup(now, w, why, out)
        if level >= PAUSE and not self.paused_all:
            self.paused_all = True
            self.totals.pauses += 1
            out.append(SetAdmission("", "", True, why))
        elif level < PAUSE and self.paused_all:
            self.paused_all = False
            self.totals.resumes += 1
            out.append(SetAdmission("", "", False, why))
        if level >= RESTART:
            workers = [w for w in self.processes.values() if w.holder]
            if workers and not any(w.recycling for w in workers):
                largest = max(workers, key=lambda w: (w.rss, w.key))
                self._recycle(largest, f"{why}; {largest.key} is the largest worker", out)
