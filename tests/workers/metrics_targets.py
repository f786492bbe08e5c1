"""Worker targets and a batch processor for tests/e2e/test_metrics.py: module-level, so
spawn can import them (and a BatchSpec's processor can be named)."""

from __future__ import annotations

import os

import lessor
from lessor import Factory
from tests.support.helpers import wait_until

HOLD_BOUND = 60.0  # seconds a worker holds its lease at most, should the test never stop it


def hold(pool: str, out_dir: str) -> None:
    """Lease one resource of ``pool`` and hold it until ``<out_dir>/stop`` exists.

    Writes ``<out_dir>/<pid>.held`` once the lease is granted, so the test knows
    which process holds what (and which pid to SIGKILL)."""
    with lessor.connect().pool(pool).lease(timeout=30):
        path = os.path.join(out_dir, f"{os.getpid()}.held")
        with open(path + ".tmp", "w") as out:
            out.write(str(lessor.worker_index()))
        os.replace(path + ".tmp", path)  # the test never reads half a file
        wait_until(lambda: os.path.exists(os.path.join(out_dir, "stop")), HOLD_BOUND, 0.01)


def double(items: list[int]) -> list[int]:
    """A batch processor: one result per item, in order."""
    return [2 * item for item in items]


class Numbers(Factory[int]):
    """Plain ints; picklable (a TokenFactory is not), so a process-scoped spec can travel
    to the workers."""

    def __init__(self) -> None:
        self.n = 0

    def create(self) -> int:
        self.n += 1
        return self.n
