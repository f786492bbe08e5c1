"""Recent durations for p50/p95/p99 (a bounded window), and a histogram of all of them.

The histogram has fixed bounds (:data:`BOUNDS_MS`), counts every value ever added
and their sum: what a Prometheus ``_seconds`` histogram needs, at one ``bisect`` per
value, while the window keeps memory bounded.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque

__all__ = ["BOUNDS_MS", "Samples", "nearest_rank"]

#: Upper bounds of the histogram's buckets (milliseconds, inclusive); a last bucket
#: (+Inf) takes the rest. From 0.1 ms (an idle pool's grant) to 30 s (a default timeout).
BOUNDS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
             1000.0, 2500.0, 5000.0, 10000.0, 30000.0)  # fmt: skip


class Samples:
    """Keeps the last ``size`` values; percentiles by nearest rank over that window."""

    __slots__ = ("_values", "buckets", "total")

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)
        #: Values ever added per bucket of BOUNDS_MS (not cumulative), +Inf last.
        self.buckets = [0] * (len(BOUNDS_MS) + 1)
        #: The sum of every value ever added.
        self.total = 0.0

    def add(self, value: float) -> None:
        self._values.append(value)
        self.buckets[bisect_left(BOUNDS_MS, value)] += 1
        self.total += value

    def percentiles(self, *qs: float) -> tuple[float, ...]:
        if not self._values:
            return tuple(0.0 for _ in qs)
        ordered = sorted(self._values)
        return tuple(nearest_rank(ordered, q) for q in qs)


def nearest_rank(ordered: list[float], q: float) -> float:
    """The ``q`` percentile (0 < q <= 1) of non-empty, sorted ``ordered``, by nearest rank."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
