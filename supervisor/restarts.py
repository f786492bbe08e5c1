"""What a supervisor does when a child exits: pure OTP restart logic, time passed in.

``RestartPlanner.child_exited`` answers with a plan (restart which children after
stopping which, drop the child, or give up and escalate); the supervisor actor
carries it out. Restart intensity is OTP's ``add_restart``: more than
``max_restarts`` restarts within ``max_seconds`` and the supervisor gives up.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from lessor.specs import Backoff, Strategy

__all__ = ["GiveUp", "Plan", "Remove", "Restart", "RestartIntensity", "RestartPlanner"]


class RestartIntensity:
    """At most ``max_restarts`` restarts in any window of ``max_seconds``."""

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._times: deque[float] = deque()

    def add(self, now: float) -> bool:
        """Record a restart; False when it exceeds the intensity."""
        times = self._times
        times.append(now)
        while times and times[0] < now - self.max_seconds:  # OTP keeps R >= Now - Period
            times.popleft()
        return len(times) <= self.max_restarts

    @property
    def recent(self) -> int:
        """Restarts inside the window as of the last ``add``."""
        return len(self._times)


@dataclass(frozen=True, slots=True)
class Restart:
    """Stop ``stop`` (already in reverse start order), drop ``remove``, then start ``start``
    in order after ``delay`` seconds. Indices refer to the children before removal."""

    stop: tuple[int, ...]
    start: tuple[int, ...]
    remove: tuple[int, ...]
    delay: float


@dataclass(frozen=True, slots=True)
class Remove:
    """The child is done (temporary, or transient that exited normally): forget it."""

    index: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Intensity exceeded: stop every child and fail, so the parent decides."""

    reason: str


Plan = Restart | Remove | GiveUp


class RestartPlanner:
    """One supervisor's strategy, intensity and backoff."""

    def __init__(
        self,
        strategy: Strategy,
        intensity: RestartIntensity,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.strategy = strategy
        self.intensity = intensity
        self.backoff = backoff
        self._rng = rng or random.Random()

    def child_exited(
        self,
        now: float,
        index: int,
        abnormal: bool,
        restart_types: Sequence[str],
        running: Sequence[bool],
    ) -> Plan:
        """Child ``index`` exited (``abnormal``: it failed). ``running`` is the others' state."""
        kind = restart_types[index]
        if kind == "temporary" or (kind == "transient" and not abnormal):
            return Remove(index)
        if not self.intensity.add(now):
            return GiveUp(
                f"{self.intensity.recent} restarts within {self.intensity.max_seconds:g}s "
                f"(max_restarts={self.intensity.max_restarts})"
            )
        if self.strategy == "one_for_one":
            affected = [index]
        elif self.strategy == "one_for_all":
            affected = list(range(len(restart_types)))
        else:  # rest_for_one
            affected = list(range(index, len(restart_types)))
        siblings = [i for i in affected if i != index and running[i]]
        # OTP: a temporary sibling stopped for a restart is not started again.
        dropped = tuple(i for i in siblings if restart_types[i] == "temporary")
        start = tuple(i for i in affected if i == index or (running[i] and i not in dropped))
        return Restart(tuple(reversed(siblings)), start, dropped, self._delay())

    def _delay(self) -> float:
        backoff = self.backoff
        if backoff is None:
            return 0.0
        doublings = min(max(0, self.intensity.recent - 1), 64)  # 2.0**1024 overflows
        base = min(backoff.max, backoff.min * 2.0**doublings)
        return base * (1.0 + backoff.jitter * self._rng.random())
