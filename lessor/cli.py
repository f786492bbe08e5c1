"""The ``lessor`` command. ``lessor demo`` runs the main job on embedded defaults."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from typing import Any

from lessor.factory import TokenFactory
from lessor.runtime import Runtime
from lessor.specs import PoolSpec

__all__ = ["main"]


def _demo_worker(jobs: int) -> None:
    """A worker process: borrow a slot ``jobs`` times through the runtime's pool."""
    from lessor.client import connect

    slots = connect().pool("slots")
    for _ in range(jobs):
        with slots.lease(timeout=30):
            pass


def demo(threads: int = 8, jobs: int = 200, slots: int = 3, workers: int = 2) -> dict[str, Any]:
    """Threads and worker processes share a few slots through one supervised pool.

    One extra thread dies holding a slot, to show its lease coming back at once.
    """
    holding: set[int] = set()
    lock = threading.Lock()
    clashes = 0
    with Runtime(handle_signals=False) as runtime:
        pool = runtime.add_pool(PoolSpec("slots", TokenFactory(), max_size=slots, lease_ttl=30))

        def worker() -> None:
            nonlocal clashes
            for _ in range(jobs):
                with pool.lease(timeout=10) as slot:
                    with lock:
                        clashes += slot in holding
                        holding.add(slot)
                    with lock:
                        holding.discard(slot)

        leaker = threading.Thread(target=pool.acquire, name="dies-holding-a-slot")
        leaker.start()
        leaker.join()
        pool_threads = [threading.Thread(target=worker, name=f"job-{i}") for i in range(threads)]
        processes = runtime.spawn_workers(_demo_worker, workers, (jobs,), "transient")
        for w in pool_threads:
            w.start()
        for w in pool_threads:
            w.join()
        runtime.join(processes, timeout=60)
        stats = pool.stats().as_dict()
        tree = runtime.tree()
        report = runtime.shutdown(timeout=5)
    return {
        "threads": threads,
        "worker_processes": workers,
        "leases": (threads + workers) * jobs,
        "clashes": clashes,
        "stats": stats,
        "tree": tree,
        "shutdown": {"clean": report.clean, "duration_s": report.duration_s,
                     "reclaimed": [lease.id for lease in report.reclaimed]},
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lessor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "demo", help="threads and worker processes share a few slots; prints the pool's stats"
    )
    run.add_argument("--threads", type=int, default=8)
    run.add_argument("--jobs", type=int, default=200, help="leases per thread")
    run.add_argument("--slots", type=int, default=3)
    run.add_argument("--workers", type=int, default=2, help="worker processes")
    args = parser.parse_args(argv)
    report = demo(args.threads, args.jobs, args.slots, args.workers)
    print(json.dumps(report, indent=2))
    return 0 if report["clashes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
