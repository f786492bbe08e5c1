"""A bounded window of recent durations, for p50/p95/p99 without unbounded memory."""

from __future__ import annotations

import math
from collections import deque

__all__ = ["Samples"]


class Samples:
    """Keeps the last ``size`` values; percentiles by nearest rank over that window."""

    __slots__ = ("_values",)

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(value)

    def percentiles(self, *qs: float) -> tuple[float, ...]:
        if not self._values:
            return tuple(0.0 for _ in qs)
        ordered = sorted(self._values)
        last = len(ordered) - 1
        n = len(ordered)
        return tuple(ordered[min(last, max(0, math.ceil(q * n) - 1))] for q in qs)
