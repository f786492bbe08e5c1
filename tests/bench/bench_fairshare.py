"""Benchmark: how fairly busy workers share a process-scoped pool's global quota, and
what fairness costs.

Run by hand from the repository root: ``python tests/bench/bench_fairshare.py [--json]
[--seconds 5] [--repeat 1]``. Uses LESSOR_PG_DSN, or starts the embedded PostgreSQL the
tests use.

The setup of issue #14: 4 worker processes of 4 threads each on
``PoolSpec("pg", PostgresFactory(dsn), max_size=4, scope="process", max_total=5)``.
From one start line, each thread leases a connection, runs ``SELECT pg_sleep(0.5-2 ms)``
and releases it, for ``--seconds``. Each round runs the same workload twice, taking
turns: with fair shares (``add_pool(..., fair_share=True)``, the default) and without
(``fair_share=False``: only idle quota moves between workers, as before).

Reported for each:

- ``first_ms``: per worker, from the start line to its first connection;
- ``first_after_release_ms``: per worker, from the first connection released by anyone
  to its own first connection (0 if it had one by then). Target: every one <= 100 ms;
- ``jain``: Jain's fairness index over the workers' lease counts,
  ``(sum x)^2 / (n sum x^2)``: 1 is equal shares, 1/n one worker doing everything.
  Target: >= 0.9;
- ``leases`` (per worker) and ``leases_per_s`` (all together);
- ``reconnects_per_s``: connections closed (and so reopened) per second during the run,
  all workers together: the price of moving quota.

``throughput_ratio`` is fair leases per second over unfair ones, medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import postgres  # run as a script: this folder is on sys.path

from lessor import PoolSpec, Runtime
from lessor.adapters.postgres import PostgresFactory

WORKERS, THREADS, MAX_SIZE, MAX_TOTAL = 4, 4, 4, 5
FIRST_TARGET_MS, JAIN_TARGET = 100.0, 0.9


def jain(xs: list[int]) -> float:
    total = sum(xs)
    squares = sum(x * x for x in xs)
    return total * total / (len(xs) * squares) if squares else 0.0


def one_run(dsn: str, fair: bool, seconds: float) -> dict[str, Any]:
    from tests.support.helpers import wait_until  # on sys.path once postgres() ran
    from tests.workers import quota_targets

    with tempfile.TemporaryDirectory(prefix="lessor-fair-") as out:
        start = Path(out) / "start"
        rt = Runtime(handle_signals=False)
        try:
            factory = PostgresFactory(dsn, application_name="lessor-bench-fair")
            spec = PoolSpec("pg", factory, max_size=MAX_SIZE, scope="process",
                            max_total=MAX_TOTAL)  # fmt: skip
            rt.add_pool(spec, fair_share=fair)
            group = rt.spawn_workers(quota_targets.pg_rounds, WORKERS,
                                     args=("pg", THREADS, seconds, out, str(start)))  # fmt: skip
            ready = wait_until(
                lambda: len(rt.process_pool_stats("pg").per_process) == WORKERS, timeout=60
            )
            assert ready, "the workers did not start"
            began = time.monotonic()
            start.touch()
            assert rt.join(group, timeout=seconds + 180), "the workers did not finish"
            after = rt.quota("pg").stats()
        finally:
            rt.shutdown(timeout=5)
        reports = [json.loads(p.read_text()) for p in Path(out).glob("rounds-*.json")]
    assert len(reports) == WORKERS and after.leased == 0  # every token came back
    reports.sort(key=lambda r: r["first"])
    first_release = min(r["first_release"] for r in reports)
    leases = [sum(r["counts"]) for r in reports]
    return {
        "first_ms": [round((r["first"] - began) * 1000, 1) for r in reports],
        "first_after_release_ms": [
            round(max(0.0, r["first"] - first_release) * 1000, 1) for r in reports
        ],
        "jain": round(jain(leases), 3),
        "leases": leases,
        "leases_per_s": round(sum(leases) / seconds),
        "reconnects_per_s": round(sum(r["destroyed"] for r in reports) / seconds, 1),
    }


def run(seconds: float, repeat: int) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {"fair": [], "unfair": []}
    with postgres() as dsn:
        for _ in range(repeat):
            for mode in ("fair", "unfair"):  # taking turns: they share the machine's noise
                rounds[mode].append(one_run(dsn, mode == "fair", seconds))
    result: dict[str, Any] = {
        "setup": {"workers": WORKERS, "threads": THREADS, "max_size": MAX_SIZE,
                  "max_total": MAX_TOTAL, "seconds": seconds, "repeat": repeat},
    }  # fmt: skip
    for mode, runs in rounds.items():
        result[mode] = {
            "first_after_release_ms_max": max(max(r["first_after_release_ms"]) for r in runs),
            "jain_min": min(r["jain"] for r in runs),
            "leases_per_s": statistics.median(r["leases_per_s"] for r in runs),
            "reconnects_per_s": statistics.median(r["reconnects_per_s"] for r in runs),
            "runs": runs,
        }
    fair, unfair = result["fair"], result["unfair"]
    result["throughput_ratio"] = round(fair["leases_per_s"] / unfair["leases_per_s"], 3)
    result["targets_met"] = {
        "first_after_release_ms": fair["first_after_release_ms_max"] <= FIRST_TARGET_MS,
        "jain": fair["jain_min"] >= JAIN_TARGET,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=5.0, help="each run's length (s)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of fair + unfair")
    args = parser.parse_args()
    result = run(args.seconds, args.repeat)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>16}: {value}")


if __name__ == "__main__":
    sys.exit(main())
