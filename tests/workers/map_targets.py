"""Map functions and worker targets for the map/imap tests: module-level, so spawn can
import them. Items are plain lists (msgpack values)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import lessor

#: The longest a target waits for a file the test creates (a bound, not a pace).
WAIT_LIMIT = 60.0


class Boom(Exception):
    """A map function's own exception type: its qualified name crosses as error_type."""


def _wait_for(path: str, limit: float = WAIT_LIMIT) -> bool:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)  # polling a file the test makes: the worker's only way to hear it
    return True


def square(x: int) -> int:
    """x * x; a negative x raises Boom, from a frame of its own (``explode``)."""
    if x < 0:
        explode(x)
    return x * x


def explode(x: int) -> None:
    raise Boom(f"negative: {x}")


def huge_error(size: int) -> None:
    """Raise with a message of ``size`` characters, from ``size // 1000`` nested frames."""

    def down(depth: int) -> None:
        if depth:
            down(depth - 1)
        raise ValueError("e" * size)

    down(min(size // 1000, 500))


def frames(_x: int) -> int:
    """How many frames this worker has sent its runtime so far (asks and tells)."""
    return lessor.connect().frames_sent


def where(item: list[Any]) -> list[int]:
    """[x, directory]: mark this worker's index there and wait until every worker of the
    group has (so each takes one item); [x, its index, its group's size, its pid]."""
    x, directory = item
    index, count = lessor.worker_index(), lessor.worker_count()
    Path(directory, f"index-{index}").touch()
    for other in range(count):
        _wait_for(os.path.join(directory, f"index-{other}"))
    return [x, index, count, os.getpid()]


def die_on(item: list[Any]) -> int:
    """[x, die]: SIGKILL this worker when ``die``, else x * x."""
    x, die = item
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    return int(x) * int(x)


def mark_and_wait(item: list[Any]) -> int:
    """[x, directory, wait_for or None]: mark ``x`` started (a file ``started-x`` holding
    this worker's pid), then wait for the file ``wait_for`` in that directory if one is
    named; x * x. A negative x raises Boom (after marking)."""
    x, directory, wait_for = item
    Path(directory, f"started-{x}").write_text(str(os.getpid()))
    if wait_for is not None:
        _wait_for(os.path.join(directory, wait_for))
    if x < 0:
        raise Boom(f"negative: {x}")
    return int(x) * int(x)


def report_index(out_dir: str) -> None:
    """Write ``index count`` to ``<index>.<pid>``; slot 0's first life then fails, so its
    restarted successor writes its own line for the same slot."""
    index, count = lessor.worker_index(), lessor.worker_count()
    Path(out_dir, f"{index}.{os.getpid()}").write_text(f"{index} {count}")
    first = Path(out_dir, "failed-once")
    if index == 0 and not first.exists():
        first.touch()
        raise RuntimeError("slot 0 fails once")


def put_index(queue: Any) -> None:
    """Put [index, count] on a queue the runtime passed in ``args`` (a Manager's)."""
    queue.put([lessor.worker_index(), lessor.worker_count()])
