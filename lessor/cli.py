"""The ``lessor`` command. ``lessor demo`` runs the main job on embedded defaults."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence

from lessor.factory import TokenFactory
from lessor.handle import start_pool
from lessor.specs import PoolSpec

__all__ = ["main"]


def demo(threads: int = 8, jobs: int = 200, slots: int = 3) -> dict[str, object]:
    """Many threads share a few slots through one pool actor; no slot is ever shared."""
    pool = start_pool(PoolSpec("slots", TokenFactory(), max_size=slots, lease_ttl=30))
    holding: set[int] = set()
    lock = threading.Lock()
    clashes = 0

    def worker() -> None:
        nonlocal clashes
        for _ in range(jobs):
            with pool.lease(timeout=10) as slot:
                with lock:
                    clashes += slot in holding
                    holding.add(slot)
                with lock:
                    holding.discard(slot)

    try:
        workers = [threading.Thread(target=worker, name=f"job-{i}") for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stats = pool.stats().as_dict()
    finally:
        pool.stop()
    return {"threads": threads, "leases": threads * jobs, "clashes": clashes, "stats": stats}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lessor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("demo", help="threads share a small pool of slots; prints its stats")
    run.add_argument("--threads", type=int, default=8)
    run.add_argument("--jobs", type=int, default=200, help="leases per thread")
    run.add_argument("--slots", type=int, default=3)
    args = parser.parse_args(argv)
    report = demo(args.threads, args.jobs, args.slots)
    print(json.dumps(report, indent=2))
    return 0 if report["clashes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
