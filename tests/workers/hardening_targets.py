"""Worker targets for tests/supervisor/test_runtime_hardening.py.

Module-level, so spawn can import them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

import lessor


def boom() -> None:
    """Fail at once with an uncaught exception (a worker that keeps raising)."""
    lessor.connect()
    raise ValueError("boom: this worker always fails")


def done() -> None:
    """A batch job that finishes at once and exits cleanly."""
    lessor.connect()


def exit_cleanly(x: Any) -> Any:
    """A map function that ends its worker with status 0 before answering."""
    raise SystemExit(0)


def hold_and_ignore(pool: str, ready_dir: str) -> None:
    """Hold a lease; ignore SIGTERM and Drain. Mark ``ready`` and, once drained, ``drained``."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    client = lessor.connect()
    client.pool(pool, cache=False).acquire(timeout=30)
    _mark(ready_dir, "ready")
    client.draining.wait()
    _mark(ready_dir, "drained")
    while True:
        time.sleep(3600)


def hold_until_drained(pool: str, ready_dir: str) -> None:
    """Hold a lease until told to drain, then give it back and exit."""
    client = lessor.connect()
    with client.pool(pool, cache=False).lease(timeout=30):
        _mark(ready_dir, f"ready-{os.getpid()}")
        client.draining.wait()


def _mark(directory: str, name: str) -> None:
    with open(os.path.join(directory, name), "w") as out:
        out.write(str(os.getpid()))


def _refuse_to_be_rebuilt() -> None:
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("NotHere cannot be rebuilt in a worker process")


class NotHere:
    """Pickles fine in the runtime; unpickling it in a worker raises."""

    def __call__(self, x: Any) -> Any:
        return x

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, ())


def _rebuild() -> NotHere:
    _refuse_to_be_rebuilt()
    return NotHere()
