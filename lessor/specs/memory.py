"""The memory manager's spec: which limit each process has, and what happens near it.

Levels follow Dask's worker memory (target .60, spill .70, pause .80, terminate .95
of the limit): here ``warn`` logs, ``cleanup`` runs the process's cleanup handlers,
``pause`` stops pools granting it new leases, and ``restart`` recycles the worker
(drain, then a fresh process), as Celery's ``worker_max_memory_per_child`` does
between tasks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from lessor.specs.checks import number, positive, require

__all__ = ["LEVELS", "MemorySpec", "Thresholds"]

#: Samples a leak slope is fitted to, at least: ``leak_window`` spans this many intervals.
LEAK_SAMPLES = 8
#: The levels a process (or the machine) can be at, lowest first.
LEVELS = ("ok", "warn", "cleanup", "pause", "restart")


def _fraction(name: str, value: Any) -> None:
    require(
        value is None or (number(value) and 0 < value <= 1),
        name, "must be a fraction in (0, 1] or None", value,
    )  # fmt: skip


@dataclass(frozen=True)
class Thresholds:
    """Fractions of a limit at which each level begins; None: that level is never reached.

    A level is entered as soon as the fraction reaches its threshold and left only
    once the fraction falls ``hysteresis`` below it, so a process hovering at a
    threshold does not flap between pausing and resuming. The resume level of
    ``pause`` is therefore ``pause - hysteresis``.
    """

    #: Log and emit an event (fraction of the limit).
    warn: float | None = 0.60
    #: Run the process's cleanup handlers (fraction of the limit).
    cleanup: float | None = 0.70
    #: Pools grant the process no new lease (fraction of the limit).
    pause: float | None = 0.80
    #: Recycle the worker: drain it, then start a fresh one (fraction of the limit).
    restart: float | None = 0.95
    #: How far below a threshold the fraction must fall to leave its level (fraction).
    hysteresis: float = 0.05

    def __post_init__(self) -> None:
        for name in ("warn", "cleanup", "pause", "restart"):
            _fraction(name, getattr(self, name))
        set_ = [(n, v) for n, v in self.levels() if v is not None]
        for (low, low_v), (high, high_v) in itertools.pairwise(set_):
            require(high_v > low_v, high, f"must be above {low} ({low_v})", high_v)
        lowest = set_[0][1] if set_ else 1.0
        require(
            number(self.hysteresis) and 0 <= self.hysteresis < lowest, "hysteresis",
            f"must be >= 0 and below the lowest threshold ({lowest})", self.hysteresis,
        )  # fmt: skip

    def levels(self) -> list[tuple[str, float | None]]:
        """(level, threshold) for every level above ``ok``, lowest first."""
        return [("warn", self.warn), ("cleanup", self.cleanup), ("pause", self.pause),
                ("restart", self.restart)]  # fmt: skip


#: The machine's thresholds: fractions of its memory (or its cgroup's limit) in use.
#: Higher than a worker's: a machine at 60% is healthy.
MACHINE = Thresholds(warn=0.85, cleanup=0.88, pause=0.92, restart=0.96, hysteresis=0.03)


@dataclass(frozen=True)
class MemorySpec:
    """What the memory manager watches and how it acts (``runtime.add_memory(spec)``).

    A worker's limit is the lowest of ``max_memory`` and ``memory_fraction`` of the
    machine's memory, where the machine's memory is the cgroup's limit when one is
    set (a container) and the total memory otherwise. With neither set, workers have
    no limit of their own: only the machine's thresholds and leak detection apply.
    The runtime's own process gets the same limit, but only ``warn`` and ``cleanup``
    act on it (it cannot be paused or recycled).
    """

    #: A worker's limit (bytes of RSS); None: no fixed limit.
    max_memory: int | None = None
    #: A worker's limit as a fraction of the machine's memory; None: none.
    memory_fraction: float | None = None
    #: Levels of a process, as fractions of its limit.
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: Levels of the whole machine, as fractions of its memory in use (total minus
    #: available, or the cgroup's usage): at ``pause`` pools grant nobody, at
    #: ``restart`` the largest worker is recycled. None: the machine is not watched.
    machine: Thresholds | None = MACHINE
    #: Time between samples (seconds).
    interval: float = 0.25
    #: A process whose RSS grows faster than this, sustained over ``leak_window``, is
    #: flagged as leaking (MB = 10**6 bytes, per minute); None: no leak detection.
    leak_mb_per_min: float | None = 60.0
    #: The window the growth slope is fitted over (seconds), at least 8 intervals; a
    #: slope is only judged once samples span half of it.
    leak_window: float = 60.0
    #: While a process stays at ``cleanup`` or above, its handlers run again after
    #: this long (seconds).
    cleanup_interval: float = 10.0
    #: How long a worker being recycled gets to finish its item and release before it
    #: is sent SIGTERM (seconds).
    recycle_grace: float = 10.0
    #: A worker paused this long whose memory has not fallen to the resume level is
    #: recycled: held Acquires would only keep it stuck there (seconds); None: never.
    max_pause: float | None = 10.0
    #: Time between USS readings of each process, which cost ~10x an RSS reading
    #: (seconds); None: never.
    uss_interval: float | None = 5.0

    def __post_init__(self) -> None:
        require(
            self.max_memory is None
            or (isinstance(self.max_memory, int) and not isinstance(self.max_memory, bool)
                and self.max_memory > 0),
            "max_memory", "must be a positive int (bytes) or None", self.max_memory,
        )  # fmt: skip
        _fraction("memory_fraction", self.memory_fraction)
        require(isinstance(self.thresholds, Thresholds), "thresholds", "must be a Thresholds",
                self.thresholds)  # fmt: skip
        require(self.machine is None or isinstance(self.machine, Thresholds), "machine",
                "must be a Thresholds or None", self.machine)  # fmt: skip
        for name in ("interval", "leak_window", "cleanup_interval", "recycle_grace"):
            positive(name, getattr(self, name))
            require(getattr(self, name) < float("inf"), name, "must be finite", getattr(self, name))
        positive("leak_mb_per_min", self.leak_mb_per_min, optional=True)
        positive("uss_interval", self.uss_interval, optional=True)
        positive("max_pause", self.max_pause, optional=True)
        require(  # a slope is fitted to 8 points at least (MemoryCore)
            self.leak_window >= LEAK_SAMPLES * self.interval, "leak_window",
            f"must span at least {LEAK_SAMPLES} intervals ({LEAK_SAMPLES * self.interval}s)",
            self.leak_window,
        )  # fmt: skip

    def limit(self, machine_bytes: int) -> int | None:
        """A worker's limit (bytes) on a machine with ``machine_bytes`` of memory."""
        limits = [self.max_memory] if self.max_memory is not None else []
        if self.memory_fraction is not None:
            limits.append(int(self.memory_fraction * machine_bytes))
        return min(limits) if limits else None
