"""The ``lessor`` command. ``lessor demo`` runs the main job on embedded defaults."""

from __future__ import annotations

import argparse
import contextlib
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

from lessor import __version__
from lessor.errors import ActorStopped, PoolClosed, RuntimeStopped
from lessor.factory import TokenFactory
from lessor.runtime.runtime import Runtime
from lessor.specs import PoolSpec

__all__ = ["main"]


#: What a job gets once the runtime is going away (ShuttingDown is a PoolClosed): the
#: end of its work, not a failure of its own.
GOING_AWAY = (PoolClosed, ActorStopped, RuntimeStopped)
#: The longest any wait of the demo goes without looking whether it is over.
SLICE = 0.05
#: How long an interrupted demo waits for its threads to see the end, before it goes.
THREADS_GRACE = 2.0
#: The shutdown time of the demo's runtime (also after one Ctrl-C).
SHUTDOWN_TIMEOUT = 5.0

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


def _demo_worker(jobs: int, marker_dir: str, ready: Any, go: Any) -> None:
    """A worker process: borrow a slot ``jobs`` times through the runtime's pool.

    It says it is ``ready`` (a Semaphore) and starts when the threads do (``go``, an
    Event), so that they compete. Once the runtime drains (Ctrl-C) it stops quietly:
    it waits only in short slices, looking at ``draining`` between them.
    """
    from lessor.worker.client import connect

    client = connect()
    slots = client.pool("slots")
    markers = _Markers(marker_dir)
    ready.release()
    while not go.wait(SLICE):
        if client.draining.is_set():
            return
    clashes = 0
    try:
        for _ in range(jobs):
            if client.draining.is_set():
                return
            with slots.lease(timeout=30) as slot:
                clashes += markers.hold(slot)
    except GOING_AWAY:
        return  # the runtime is shutting down: that ends the work
    markers.record(clashes)


def _wait_ready(runtime: Runtime, group: Any, ready: Any, n: int, timeout: float) -> None:
    """Wait until ``n`` workers are connected; raises WorkersFailed if their group gives up."""
    deadline = time.monotonic() + timeout
    for _ in range(n):
        while not ready.acquire(timeout=SLICE):
            if runtime.join(group, timeout=0):  # all gone without saying they were ready
                raise RuntimeError("the demo's worker processes exited before they started")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the demo's worker processes did not start in {timeout:g}s")


def demo(threads: int = 8, jobs: int = 200, slots: int = 3, workers: int = 2) -> dict[str, Any]:
    """Threads and worker processes share a few slots through one supervised pool.

    One extra thread dies holding a slot, to show its lease coming back at once.
    Every job marks its slot while it holds it (see :class:`_Markers`): a slot
    marked twice at once is a clash.
    """
    clashes = 0
    lock = threading.Lock()
    stopped: list[BaseException] = []  # why jobs stopped before their end
    # Ctrl-C: the runtime (built in the main thread) drains, then raises KeyboardInterrupt
    # wherever the main thread waits; worker processes ignore SIGINT and get a Drain.
    with (
        tempfile.TemporaryDirectory(prefix="lessor-demo-") as marker_dir,
        Runtime(shutdown_timeout=SHUTDOWN_TIMEOUT) as runtime,
    ):
        markers = _Markers(marker_dir)
        pool = runtime.add_pool(PoolSpec("slots", TokenFactory(), max_size=slots, lease_ttl=30))

        def worker() -> None:
            nonlocal clashes
            try:
                for _ in range(jobs):
                    with pool.lease(timeout=10) as slot:
                        clash = markers.hold(slot)
                    with lock:
                        clashes += clash
            except GOING_AWAY as exc:  # the runtime is shutting down: the end of the work
                stopped.append(exc)

        def leak() -> None:
            with contextlib.suppress(*GOING_AWAY):  # interrupted before it got its slot
                pool.acquire()

        leaker = threading.Thread(target=leak, name="dies-holding-a-slot")
        leaker.start()
        leaker.join()
        pool_threads = [threading.Thread(target=worker, name=f"job-{i}") for i in range(threads)]
        spawn = multiprocessing.get_context("spawn")
        ready, go = spawn.Semaphore(0), spawn.Event()
        processes = runtime.spawn_workers(
            _demo_worker, workers, (jobs, marker_dir, ready, go), "transient"
        )
        try:
            _wait_ready(runtime, processes, ready, workers, 60)
            go.set()  # every worker is connected: all start borrowing together
            for w in pool_threads:
                w.start()
            for w in pool_threads:
                w.join()
        finally:  # interrupted: let the jobs see the end before their directory goes
            grace = time.monotonic() + THREADS_GRACE
            for w in pool_threads:
                if w.is_alive():
                    w.join(max(0.0, grace - time.monotonic()))
        if stopped:  # not interrupted, yet the pool went away under the jobs
            raise stopped[0]
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
    parser.add_argument("--version", action="version", version=f"lessor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "demo", help="threads and worker processes share a few slots; prints the pool's stats"
    )
    run.add_argument("--threads", type=int, default=8)
    run.add_argument("--jobs", type=int, default=200, help="leases per thread")
    run.add_argument("--slots", type=int, default=3)
    run.add_argument("--workers", type=int, default=2, help="worker processes")
    args = parser.parse_args(argv)
    try:
        report = demo(args.threads, args.jobs, args.slots, args.workers)
    except KeyboardInterrupt:  # Ctrl-C: the runtime has drained and shut down
        print("lessor demo: interrupted; shut down", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2))
    return 0 if report["clashes"] == 0 and report["workers_finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
