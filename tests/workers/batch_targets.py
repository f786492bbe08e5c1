"""Worker targets for the batcher tests (module-level, so workers can import them)."""

from __future__ import annotations

import os
import time
from typing import Any

import lessor


def submit_range(batcher: str, start: int, stop: int, out_dir: str) -> None:
    """Submit ``start..stop``; write each acknowledged item (its result came back) to a file."""
    handle = lessor.connect().batcher(batcher)
    futures = [(i, handle.submit(i)) for i in range(start, stop)]
    acked, failed = [], []
    for i, future in futures:
        try:
            acked.append(f"{i} {future.result(timeout=60)!r}")
        except Exception as exc:
            failed.append(f"{i} {type(exc).__name__}: {exc}")
    with open(os.path.join(out_dir, f"{start}.acked"), "w") as out:
        out.write("\n".join(acked))
    with open(os.path.join(out_dir, f"{start}.failed"), "w") as out:
        out.write("\n".join(failed))


def time_submits(batcher: str, n: int, out_dir: str) -> None:
    handle = lessor.connect().batcher(batcher)
    began = time.perf_counter()
    futures = handle.submit_many(range(n)) if n < 0 else [handle.submit(i) for i in range(n)]
    submitted = time.perf_counter() - began
    for future in futures:
        future.result(timeout=60)
    with open(os.path.join(out_dir, f"{os.getpid()}.time"), "w") as out:
        out.write(f"{submitted} {time.perf_counter() - began}")


def echo(items: list[Any]) -> list[Any]:
    return [("done", item) for item in items]
