"""MemoryActor: samples the runtime's processes and carries out what MemoryCore decides.

Each interval the runtime's scheduler wakes it. The turn only re-arms the timer;
the sampling (psutil reads) runs after the turn, and its result comes back as a
turn of its own in which the core decides. What it decides (pausing a worker's
admission in every pool, pushing Cleanup, recycling a worker) goes to its
:class:`MemorySources` after that turn, so no pool, socket or worker group is ever
touched while the memory actor holds its turn.

**Its state survives a restart.** The core lives in a :class:`MemoryLineage`: a
restarted memory actor still knows which workers it paused and which it is
recycling, so it neither forgets to resume them nor recycles them twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lessor.actors.base import Call, LessorActor
from lessor.actors.pool_messages import Tick
from lessor.actors.scheduler import Scheduler, Timer, process_scheduler
from lessor.core.memory import MemoryCore
from lessor.core.memory_decisions import (
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
from lessor.errors import ActorRestarted, ActorStopped, LessorError
from lessor.protocol.messages import GetStats, MemoryStats
from lessor.resources import ProcessSampler
from lessor.specs.memory import MemorySpec
from lessor.supervisor.events import EventKind, EventLog

__all__ = ["MemoryActor", "MemoryLineage", "MemorySources"]

log = logging.getLogger("lessor.memory")

_TICK = Tick()
#: Memory events kept for stats.
RECENT_EVENTS = 50


class MemorySources(Protocol):
    """What the memory actor watches and acts on (the runtime's side: see
    :mod:`lessor.runtime.memory`). Called after turns, never in one."""

    def watched(self) -> dict[str, tuple[int, str]]:
        """{key: (pid, holder)} of every process to sample now."""
        ...

    def admission(self, key: str, holder: str, paused: bool, why: str) -> None: ...

    def cleanup(self, key: str, why: str) -> None: ...

    def recycle(self, key: str, why: str) -> None: ...

    def cpus(self) -> int: ...


class MemoryLineage:
    """What a supervised memory actor passes to its next incarnation."""

    def __init__(self) -> None:
        self.core: MemoryCore | None = None
        self.events: deque[tuple[float, str, str, str]] = deque(maxlen=RECENT_EVENTS)
        self.sample_s = 0.0  # time spent reading psutil, in all
        self.sampled = 0


@dataclass(frozen=True, slots=True)
class _Sampled:
    now: float
    system: SystemSample
    processes: list[ProcessSample]


class MemoryActor(LessorActor):
    """The memory manager. Start it with ``runtime.add_memory(spec)``."""

    lessor_kind = "memory"

    def __init__(
        self,
        spec: MemorySpec,
        *,
        sources: MemorySources,
        lineage: MemoryLineage | None = None,
        events: EventLog | None = None,
        sampler: ProcessSampler | None = None,
        clock: Callable[[], float] = time.monotonic,
        scheduler: Scheduler | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self._sources = sources
        self._lineage = lineage or MemoryLineage()
        self._events = events
        self._sampler = sampler or ProcessSampler()
        self._clock = clock
        self._scheduler = scheduler
        self._timer: Timer | None = None
        self._next_uss = 0.0
        self.core = self._lineage.core or MemoryCore(spec)
        self._lineage.core = self.core

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        ref = self.actor_ref
        self._timer = (self._scheduler or process_scheduler()).timer(lambda: ref.tell(_TICK))
        self.in_turn(self._start)

    def _start(self) -> None:
        assert self._timer is not None
        self._timer.schedule(self._clock())  # the first sample at once
        self.ready = True

    def on_stop(self) -> None:
        self._shutdown(ActorStopped("the memory manager is stopped"))

    def on_failure(self, *_exc_info: Any) -> None:
        self._shutdown(ActorRestarted("the memory manager failed; restarting"))

    def _shutdown(self, error: LessorError) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.in_turn(self.close_mailbox, error)

    # -- messages ----------------------------------------------------------------------

    def handle_call(self, call: Call) -> Any:
        if isinstance(call.message, GetStats):
            return self.stats(self._clock())
        return super().handle_call(call)

    def handle_internal(self, message: Any) -> Any:
        match message:
            case Tick():
                now = self._clock()
                if self._timer is not None:  # next one now: a failed sample stops nothing
                    self._timer.schedule(now + self.spec.interval)
                self.later(self._sample, now >= self._next_uss)
                if now >= self._next_uss and self.spec.uss_interval is not None:
                    self._next_uss = now + self.spec.uss_interval
            case _Sampled(now, system, processes):
                self._apply(self.core.observe(now, system, processes))
            case _:
                return super().handle_internal(message)
        return None

    def _sample(self, uss: bool) -> None:
        """After the turn: read the machine and every watched process."""
        began = time.perf_counter()
        try:
            watched = self._sources.watched()
            system = self._sampler.system()
            processes = self._sampler.processes(watched, uss and self.spec.uss_interval is not None)
        except Exception:
            log.exception("memory: sampling failed")
            return
        lineage = self._lineage
        lineage.sample_s += time.perf_counter() - began
        lineage.sampled += 1
        self.deliver_internal(_Sampled(self._clock(), system, processes))

    # -- carrying out decisions --------------------------------------------------------

    def _apply(self, decisions: list[Decision]) -> None:
        sources = self._sources
        for d in decisions:
            match d:
                case LevelChanged(key, previous, level, used, limit):
                    detail = f"{previous} -> {level}: {used / MB:.0f} of {limit / MB:.0f} MB"
                    self._record("memory_level", key, detail)
                case LeakChanged(key, leaking, rate):
                    self._record(
                        "memory_leak" if leaking else "memory_leak_over",
                        key,
                        f"growing {rate:.1f} MB/min",
                    )
                case RunCleanup(key, why):
                    self._record("memory_cleanup", key, why)
                    self.later(sources.cleanup, key, why)
                case SetAdmission(key, holder, paused, why):
                    self._record("memory_pause" if paused else "memory_resume", key or "*", why)
                    self.later(sources.admission, key, holder, paused, why)
                case Recycle(key, why):
                    self._record("memory_recycle", key, why)
                    self.later(sources.recycle, key, why)

    def _record(self, kind: EventKind, subject: str, detail: str) -> None:
        self._lineage.events.append((self._clock(), kind, subject, detail))
        self.later(self._emit, kind, subject, detail)

    def _emit(self, kind: EventKind, subject: str, detail: str) -> None:
        if self._events is not None:  # (which logs it too)
            self._events.emit(kind, subject, detail)
        else:
            log.info("memory: %s %s: %s", kind, subject, detail)

    # -- what callers read -------------------------------------------------------------

    def stats(self, now: float) -> MemoryStats:
        core, lineage, totals = self.core, self._lineage, self.core.totals
        system = core.system
        machine: dict[str, Any] = {"cpus": self._sources.cpus(), "level": core.machine.level_name}
        if system is not None:
            machine |= {"total": system.total, "available": system.available,
                        "limit": system.limit, "used": system.used,
                        "cgroup_limit": system.cgroup_limit}  # fmt: skip
        processes = [
            {"key": w.key, "pid": w.pid, "holder": str(w.holder), "rss": w.rss, "uss": w.uss,
             "peak": w.peak, "limit": w.limit, "fraction": w.fraction, "level": w.level_name,
             "slope_mb_per_min": w.slope_mb_per_min, "leaking": w.leaking, "paused": w.paused,
             "recycling": w.recycling}
            for w in core.processes.values()
        ]  # fmt: skip
        events = [[round(now - at, 3), kind, subject, detail]
                  for at, kind, subject, detail in lineage.events]  # fmt: skip
        mean_us = lineage.sample_s / lineage.sampled * 1e6 if lineage.sampled else 0.0
        return MemoryStats(
            machine, processes, core.paused_all, core.paused,
            [[key, why] for key, why in core.recycled], events, totals.samples,
            totals.warnings, totals.cleanups, totals.pauses, totals.resumes, totals.recycles,
            totals.leaks, mean_us,
        )  # fmt: skip
