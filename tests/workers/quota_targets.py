"""Worker targets for tests/e2e/test_process_pools.py (process-scoped pools, fair shares)
and the fair-share bench. Module-level, so spawn can import them."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from typing import Any

import lessor
from lessor import Factory


class FileConn:
    """A "connection" that cannot cross processes: it exists while its file does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()

    def execute(self, query: str) -> str:
        if self.pid != os.getpid() or not os.path.exists(self.path):
            raise RuntimeError(f"connection {self.path} is not open in this process")
        return query


class FileConns(Factory[FileConn]):
    """Opens a FileConn per resource, one file in ``folder`` each: counting the files
    counts the connections open in every process, as pg_stat_activity would."""

    portable = False

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def create(self) -> FileConn:
        path = os.path.join(self.folder, f"{os.getpid()}-{uuid.uuid4().hex}")
        open(path, "w").close()
        return FileConn(path)

    def destroy(self, resource: FileConn) -> None:
        os.unlink(resource.path)


def open_now(folder: str) -> int:
    return len(os.listdir(folder))


def _write(out_dir: str, name: str, text: str) -> None:
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.replace(path + ".tmp", path)  # the test never reads half a file


def hammer_until(pool: str, threads: int, out_dir: str, stop: str, limit_s: float = 60.0) -> None:
    """``threads`` threads lease, use (a random 0.2-1 ms) and release connections of this
    worker's own pool until file ``stop`` exists; then write the count to ``out_dir``."""
    db = lessor.connect().pool(pool)
    counts = [0] * threads
    deadline = time.monotonic() + limit_s

    def run(i: int) -> None:
        rng = random.Random(i)
        while not os.path.exists(stop) and time.monotonic() < deadline:
            with db.lease(timeout=30) as conn:
                conn.execute("SELECT 1")
                time.sleep(rng.uniform(0.0002, 0.001))
            counts[i] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    _write(out_dir, f"hammer-{os.getpid()}", str(sum(counts)))


def late_lease(pool: str, out_dir: str, stop: str, timeout: float) -> None:
    """Lease one connection (waiting up to ``timeout``), use it, say how long the wait
    was (or the error), then create file ``stop``."""
    db = lessor.connect().pool(pool)
    began = time.monotonic()
    try:
        with db.lease(timeout=timeout) as conn:
            waited = time.monotonic() - began
            conn.execute("SELECT 1")
            time.sleep(random.uniform(0.001, 0.005))
        outcome = f"ok {waited:.3f}"
    except lessor.LessorError as exc:
        outcome = f"{type(exc).__name__} {time.monotonic() - began:.3f}"
    finally:
        open(stop, "w").close()
    _write(out_dir, "late", outcome)


def hold_until(pool: str, count: int, out_dir: str, go: str) -> None:
    """Hold ``count`` connections, say so, wait for file ``go``, then release them."""
    db = lessor.connect().pool(pool)
    leases = [db.acquire(timeout=30) for _ in range(count)]
    for lease in leases:
        lease.resource.execute("SELECT 1")
    _write(out_dir, f"holding-{os.getpid()}", str(count))
    while not os.path.exists(go):
        time.sleep(0.005)
    for lease in leases:
        db.release(lease)


def lease_twice(pool: str, out_dir: str) -> None:
    """Lease one connection and then, holding it, a second (the runtime's process holds
    the rest of the quota); say when each came."""
    db = lessor.connect().pool(pool)
    first = db.acquire(timeout=30)
    _write(out_dir, "first", "ok")
    began = time.monotonic()
    second = db.acquire(timeout=30)
    _write(out_dir, "second", f"{time.monotonic() - began:.3f}")
    db.release(second)
    db.release(first)


def pg_rounds(pool: str, threads: int, seconds: float, out_dir: str, start: str) -> None:
    """For the fair-share bench: once file ``start`` exists, ``threads`` threads lease a
    connection, run a 0.5-2 ms query and release it, for ``seconds``. Then write (JSON)
    when this worker got its first connection and first gave one back, how many leases
    each thread made, and how many connections its own pool opened and closed."""
    db = lessor.connect().pool(pool)
    while not os.path.exists(start):
        time.sleep(0.0005)
    until = time.monotonic() + seconds
    counts = [0] * threads
    firsts: list[float] = []
    released: list[float] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        rng = random.Random(os.getpid() * 100 + i)
        n = 0
        while time.monotonic() < until:
            with db.lease(timeout=60) as conn:
                if n == 0:
                    with lock:
                        firsts.append(time.monotonic())
                conn.execute("SELECT pg_sleep(%s)", (rng.uniform(0.0005, 0.002),))
            if n == 0:
                with lock:
                    released.append(time.monotonic())
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stats: Any = db.stats()
    report = {
        "pid": os.getpid(), "first": min(firsts), "first_release": min(released),
        "counts": counts, "created": stats.created, "destroyed": stats.destroyed,
    }  # fmt: skip
    _write(out_dir, f"rounds-{os.getpid()}.json", json.dumps(report))
