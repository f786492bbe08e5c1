"""What the benchmarks share: timing contenders fairly, a PostgreSQL, and the command line."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: ``fn(k)`` does ``k`` operations; a benchmark times it.
Ops = Callable[[int], None]


def per_op_us(fn: Ops, n: int) -> float:
    gc.collect()  # a collection left over from the last contender is not this one's cost
    began = time.perf_counter()
    fn(n)
    return (time.perf_counter() - began) / n * 1e6


def turns(benches: dict[str, Ops], n: int, count: int, warm: int = 2000) -> dict[str, list[float]]:
    """µs per op of each contender, ``count`` turns each, taking turns so that they
    share the machine's noise (after ``min(n, warm)`` ops each to warm up)."""
    for fn in benches.values():
        fn(min(n, warm))
    runs: dict[str, list[float]] = {name: [] for name in benches}
    for _ in range(count):
        for name, fn in benches.items():
            runs[name].append(per_op_us(fn, n))
    return runs


def interleaved(benches: dict[str, Ops], n: int, repeat: int) -> dict[str, float]:
    """Median µs per op; the contenders take turns so they share the machine's noise."""
    runs = turns(benches, n, repeat)
    return {name: statistics.median(values) for name, values in runs.items()}


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A DSN: LESSOR_PG_DSN, or the embedded server the tests use (``tests/support/pg.py``)."""
    root = str(Path(__file__).parents[2])
    if root not in sys.path:
        sys.path.append(root)  # after the installed lessor, so it never shadows it
    from tests.support import pg

    server = pg.start()
    try:
        yield server.dsn
    finally:
        pg.stop(server)


def cli(
    doc: str | None, run: Callable[[int, int], dict[str, Any]], pairs: int, repeat: int
) -> None:
    """Parse ``--json --pairs --repeat``, run, print one JSON object or a table."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pairs", type=int, default=pairs)
    parser.add_argument("--repeat", type=int, default=repeat)
    args = parser.parse_args()
    result = run(args.pairs, args.repeat)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
