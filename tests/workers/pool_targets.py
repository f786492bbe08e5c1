"""Worker targets for tests/e2e/test_pool_names.py: pool names, wait() and try-acquire
seen from a real worker process. Module-level, so spawn can import them."""

from __future__ import annotations

import os

import lessor
from lessor import Factory
from tests.support.helpers import wait_until


class Counting(Factory[int]):
    """Plain ints; picklable, so a process-scoped spec can travel to workers."""

    def __init__(self) -> None:
        self.n = 0

    def create(self) -> int:
        self.n += 1
        return self.n


class Unreachable(Factory[int]):
    """A factory for a dependency that is down: every create fails."""

    def create(self) -> int:
        raise ConnectionRefusedError("nobody listens on the test's port")


def _write(out_dir: str, name: str, text: str) -> None:
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.replace(path + ".tmp", path)  # the test never reads half a file


def names(pool: str, out_dir: str) -> None:
    """``client.pool`` for a name the runtime lacks fails at once, cached or not (file
    ``before``); once the test added the pool and wrote ``go``, the name is found."""
    client = lessor.connect()
    lines = []
    for cache in (True, False):
        sent = client.frames_sent
        try:
            client.pool(pool, cache=cache)
            lines.append("found")
        except lessor.NoSuchPool as exc:
            lines.append(f"NoSuchPool: {exc} (frames sent: {client.frames_sent - sent})")
    _write(out_dir, "before", "\n".join(lines))
    assert wait_until(lambda: os.path.exists(os.path.join(out_dir, "go")), timeout=30)
    with client.pool(pool).lease(timeout=5) as resource:
        _write(out_dir, "after", f"granted {resource}")


def wait_for(pool: str, timeout: float, out_dir: str) -> None:
    """``client.pool(pool).wait()``: for a process-scoped pool, the worker's own pool."""
    handle = lessor.connect().pool(pool)
    try:
        handle.wait(timeout=timeout)
        outcome = f"ready, size {handle.stats().size}"
    except lessor.AcquireTimeout as exc:
        outcome = f"AcquireTimeout (cause {type(exc.__cause__).__name__}): {exc}"
    _write(out_dir, "outcome", outcome)


def try_acquire(pool: str, out_dir: str) -> None:
    """A try from a worker, on a pool the test keeps busy."""
    try:
        lessor.connect().pool(pool).acquire(timeout=0)
        outcome = "granted"
    except lessor.PoolExhausted as exc:
        outcome = f"PoolExhausted: {exc}"
    _write(out_dir, "outcome", outcome)
