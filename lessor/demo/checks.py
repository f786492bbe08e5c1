"""The demo's checks, computed from its own records, not from lessor's accounting.

- **rows = acknowledged**: the rows in the table are exactly the items the job
  acknowledged (an item stored twice after a worker died would be one row: the
  sink skips existing keys; an item acknowledged but lost would be missing).
- **no double grant**: no resource (a PostgreSQL backend, an HTTP session) appears
  in two holds that overlap in time, and the holds of a process-scoped pool never
  overlap more than its ``max_total`` at once. The holds come from the workers' logs
  (:mod:`lessor.demo.job`), on the machine-wide monotonic clock.

Pure functions: the tests feed them broken logs (a resource held twice, one hold too
many) to see each check fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from lessor.core.samples import nearest_rank

__all__ = ["Check", "Hold", "double_grants", "peak", "percentile", "read_holds"]


@dataclass(frozen=True, slots=True)
class Hold:
    """One lease as its holder saw it: pool, resource, wait and hold (ns)."""

    pool: str
    resource: str
    wait_ns: int
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def read_holds(directory: str) -> list[Hold]:
    """Every hold the workers logged (a line cut short by a SIGKILL is skipped)."""
    holds = []
    for name in sorted(os.listdir(directory)):
        if not name.startswith("holds-"):
            continue
        with open(os.path.join(directory, name)) as log:
            for line in log:
                parts = line.split()
                if len(parts) == 5 and all(p.isdigit() for p in parts[2:]):
                    holds.append(Hold(parts[0], parts[1], *map(int, parts[2:])))
    return holds


def double_grants(holds: Iterable[Hold]) -> list[tuple[Hold, Hold]]:
    """Pairs of holds of one resource that overlap in time."""
    by_resource: dict[tuple[str, str], list[Hold]] = {}
    for hold in holds:
        by_resource.setdefault((hold.pool, hold.resource), []).append(hold)
    clashes = []
    for same in by_resource.values():
        same.sort(key=lambda h: h.start_ns)
        latest = same[0]
        for hold in same[1:]:
            if hold.start_ns < latest.end_ns:
                clashes.append((latest, hold))
            if hold.end_ns > latest.end_ns:
                latest = hold
    return clashes


def peak(holds: Iterable[Hold], pool: str) -> int:
    """The most holds of ``pool`` at one instant (an end before a start at a tie)."""
    edges = []
    for hold in holds:
        if hold.pool == pool:
            edges += [(hold.start_ns, 1), (hold.end_ns, -1)]
    edges.sort()
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0.0 of nothing)."""
    return nearest_rank(sorted(values), q) if values else 0.0


def run_checks(
    rows: set[int], acknowledged: set[int], holds: list[Hold], caps: dict[str, int]
) -> list[Check]:
    """The two checks of the report. ``rows``: the ids in the table; ``acknowledged``:
    the ids the job returned; ``caps``: pool -> its max_total."""
    clashes = double_grants(holds)
    peaks = {pool: peak(holds, pool) for pool in caps}
    over = {pool: n for pool, n in peaks.items() if n > caps[pool]}
    grant_detail = (
        f"{len(holds)} holds; peak at once "
        + ", ".join(f"{p} {n}/{caps[p]}" for p, n in peaks.items())
        + (f"; {len(clashes)} overlapping holds of one resource, e.g. {clashes[0]}"
           if clashes else "; no resource held twice at once")
        + (f"; over the cap: {over}" if over else "")
    )  # fmt: skip
    return [
        Check("rows_equal_acknowledged", rows == acknowledged,
              f"{len(rows)} rows in the table, {len(acknowledged)} items acknowledged"
              + (f"; {len(acknowledged - rows)} acknowledged but not stored, "
                 f"{len(rows - acknowledged)} stored but not acknowledged"
                 if rows != acknowledged else "; the same ids")),
        Check("no_double_grant", not clashes and not over and bool(holds), grant_detail),
    ]  # fmt: skip
