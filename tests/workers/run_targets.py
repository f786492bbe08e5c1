"""Jobs for tests/e2e/test_cli_run.py, run by ``lessor run`` in spawned workers
(module-level, so spawn can import them), and a factory and processor that its
configs name as ``module:callable``.

Run as ``python -m tests.workers.run_targets run --config ... module:function`` it is
the ``lessor`` command with only the ``run`` subcommand (lessor.cli wires it itself).
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import lessor
from lessor import Factory
from lessor.cli.run import add_parser, run

#: A hold lasts a random time in this range (seconds): never zero, so that two holders
#: of one slot would overlap and be seen.
HOLD = (20e-6, 500e-6)


def lease_slots(pool: str, times: int, marker_dir: str) -> None:
    """Lease from ``pool`` ``times`` times; while holding a slot, own the file
    ``<marker_dir>/<slot>.held`` (created with O_CREAT|O_EXCL). Finding it there is a
    double grant: counted, never raised, so that the job ends and the test sees it.
    Workers start leasing together (each waits until all wrote ``ready-<index>``), so
    that they compete. Writes ``done-<worker index>``: ``leases clashes``."""
    slots = lessor.connect().pool(pool)
    open(os.path.join(marker_dir, f"ready-{lessor.worker_index()}"), "w").close()
    everyone = lessor.worker_count()
    deadline = time.monotonic() + 60
    while len(glob.glob(os.path.join(marker_dir, "ready-*"))) < everyone:
        if time.monotonic() > deadline:
            raise TimeoutError("the other workers did not start")
        time.sleep(0.005)
    clashes = 0
    for _ in range(times):
        with slots.lease(timeout=30) as slot:
            path = os.path.join(marker_dir, f"{slot}.held")
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                clashes += 1
                time.sleep(random.uniform(*HOLD))
            else:
                time.sleep(random.uniform(*HOLD))
                os.unlink(path)
    done = os.path.join(marker_dir, f"done-{lessor.worker_index()}")
    with open(done + ".tmp", "w") as out:
        out.write(f"{times} {clashes}")
    os.replace(done + ".tmp", done)


def fail(message: str) -> None:
    """A job that fails at once."""
    raise RuntimeError(message)


def lease_forever(pool: str, ready_dir: str) -> None:
    """Lease and release until the runtime drains (for Ctrl-C); says it started."""
    client = lessor.connect()
    slots = client.pool(pool)
    open(os.path.join(ready_dir, f"ready-{lessor.worker_index()}"), "w").close()
    while not client.draining.is_set():
        try:
            with slots.lease(timeout=1):
                time.sleep(0.001)
        except lessor.LessorError:
            return  # the runtime is going away: the end of the job


class Numbers(Factory[int]):
    """Plain ints from ``start``, for a config's ``factory = "module:callable"``."""

    portable = True

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.made = 0

    def create(self) -> int:
        self.made += 1
        return self.start + self.made - 1


def double(items: list[Any]) -> list[Any]:
    """A batch processor: each item times two."""
    return [item * 2 for item in items]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lessor")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
