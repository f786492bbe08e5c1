"""The ``lessor`` command. ``lessor demo`` runs the main job on embedded defaults."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lessor.factory import TokenFactory
from lessor.runtime import Runtime
from lessor.specs import PoolSpec

__all__ = ["main"]


#: Each demo job holds its slot a random time in this range (seconds): never zero, so
#: two holders of one slot would overlap and be seen.
HOLD = (1e-6, 200e-6)


class _Markers:
    """Holding a slot means owning the file ``<dir>/<slot>.held``, created exclusively.

    A holder that finds the file already there holds a slot someone else holds: a
    clash. Files work across the worker processes as well as between threads.
    """

    def __init__(self, directory: str) -> None:
        self.dir = directory

    def hold(self, slot: object) -> bool:
        """Mark the slot, hold it a random time, unmark it; True on a clash."""
        path = os.path.join(self.dir, f"{slot}.held")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            clash = True
        else:
            clash = False
        time.sleep(random.uniform(*HOLD))  # the job's work with the slot
        if not clash:
            os.unlink(path)
        return clash

    def record(self, clashes: int) -> None:
        """A worker process's clash count, for the demo to add up."""
        with open(os.path.join(self.dir, f"clashes-{os.getpid()}"), "w") as out:
            out.write(str(clashes))

    def recorded(self) -> int:
        names = [n for n in os.listdir(self.dir) if n.startswith("clashes-")]
        return sum(int(Path(self.dir, n).read_text()) for n in names)


def _demo_worker(jobs: int, marker_dir: str, start: Any) -> None:
    """A worker process: borrow a slot ``jobs`` times through the runtime's pool.

    It starts when the threads do (``start``, a Barrier), so that they compete.
    """
    from lessor.client import connect

    slots = connect().pool("slots")
    markers = _Markers(marker_dir)
    start.wait(30)
    clashes = 0
    for _ in range(jobs):
        with slots.lease(timeout=30) as slot:
            clashes += markers.hold(slot)
    markers.record(clashes)


def demo(threads: int = 8, jobs: int = 200, slots: int = 3, workers: int = 2) -> dict[str, Any]:
    """Threads and worker processes share a few slots through one supervised pool.

    One extra thread dies holding a slot, to show its lease coming back at once.
    Every job marks its slot while it holds it (see :class:`_Markers`): a slot
    marked twice at once is a clash.
    """
    clashes = 0
    lock = threading.Lock()
    with (
        tempfile.TemporaryDirectory(prefix="lessor-demo-") as marker_dir,
        Runtime(handle_signals=False) as runtime,
    ):
        markers = _Markers(marker_dir)
        pool = runtime.add_pool(PoolSpec("slots", TokenFactory(), max_size=slots, lease_ttl=30))

        def worker() -> None:
            nonlocal clashes
            for _ in range(jobs):
                with pool.lease(timeout=10) as slot:
                    clash = markers.hold(slot)
                with lock:
                    clashes += clash

        leaker = threading.Thread(target=pool.acquire, name="dies-holding-a-slot")
        leaker.start()
        leaker.join()
        pool_threads = [threading.Thread(target=worker, name=f"job-{i}") for i in range(threads)]
        start = multiprocessing.get_context("spawn").Barrier(workers + 1)
        processes = runtime.spawn_workers(
            _demo_worker, workers, (jobs, marker_dir, start), "transient"
        )
        start.wait(60)  # every worker is connected: all start borrowing together
        for w in pool_threads:
            w.start()
        for w in pool_threads:
            w.join()
        finished = runtime.join(processes, timeout=60)
        in_workers = markers.recorded()
        stats = pool.stats().as_dict()
        tree = runtime.tree()
        report = runtime.shutdown(timeout=5)
    return {
        "threads": threads,
        "worker_processes": workers,
        "workers_finished": finished,
        "leases": (threads + workers) * jobs,
        "clashes": clashes + in_workers,
        "clashes_in_workers": in_workers,
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
    return 0 if report["clashes"] == 0 and report["workers_finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
