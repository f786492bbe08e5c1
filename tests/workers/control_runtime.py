"""A runtime with ``control=True`` for ``lessor top`` / ``lessor status`` tests, run as
its own process: ``python -m tests.workers.control_runtime WORKERS STOP_FILE``.

It builds a pool ``slots``, a breaker ``api`` and a batcher ``rows`` with items
pending, spawns WORKERS workers that each hold a lease of ``slots``, then prints one
JSON line (its pid, socket and the workers' pids) and waits for stdin to close. Then
it creates STOP_FILE (the workers give their leases back and return), joins them
and shuts down. ``hold`` is also the workers' target of in-process tests.
"""

from __future__ import annotations

import json
import os
import sys
import time

import lessor

#: Seconds a worker holds its lease at most, if nobody creates the stop file.
HOLD_AT_MOST = 60.0


def hold(stop_file: str) -> None:
    """Hold one lease of ``slots`` until ``stop_file`` exists."""
    slots = lessor.connect().pool("slots")
    with slots.lease(timeout=30):
        deadline = time.monotonic() + HOLD_AT_MOST
        while not os.path.exists(stop_file) and time.monotonic() < deadline:
            time.sleep(0.02)


def keep(items: list[object]) -> list[object]:
    return list(items)


def holding(runtime: lessor.Runtime, n: int, timeout: float = 30.0) -> list[int]:
    """Wait until ``n`` workers each hold a lease of ``slots``; their pids."""
    deadline = time.monotonic() + timeout
    while True:
        workers = runtime.status().workers
        pids = [w["pid"] for w in workers if w["leases"].get("slots")]
        if len(pids) >= n or time.monotonic() > deadline:
            return pids
        time.sleep(0.02)


def main(n: int, stop_file: str) -> None:
    from tests.workers.control_runtime import hold as target  # importable by name

    with lessor.Runtime(control=True) as runtime:
        runtime.add_pool(lessor.PoolSpec("slots", lessor.TokenFactory(), max_size=4))
        runtime.add_breaker(lessor.BreakerSpec("api"))
        rows = runtime.add_batcher(lessor.BatchSpec("rows", keep, max_batch_size=100, max_wait=600))
        for i in range(5):
            rows.submit(i)
        group = runtime.spawn_workers(target, n, args=(stop_file,)) if n else None
        pids = holding(runtime, n)
        socket = runtime.serve_control()
        print(json.dumps({"pid": os.getpid(), "socket": socket, "workers": pids}), flush=True)
        sys.stdin.read()
        with open(stop_file, "w"):
            pass
        if group is not None:
            runtime.join(group, 20)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
