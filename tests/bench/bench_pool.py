"""Benchmark: PoolActor Acquire+Release against a bare pykka ask and a queue.Queue pool.

Run by hand: ``python tests/bench/bench_pool.py [--json] [--pairs N] [--repeat R]``.
All figures come from the same run on the same machine; targets are ratios.
Target: ``ratio_to_ask <= 1.3`` (Release is a tell: one round trip per pair).
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
from common import cli  # run as a script: this folder is on sys.path

from lessor import PoolSpec, TokenFactory, start_pool


class Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def per_op_us(fn: Callable[[int], None], n: int) -> float:
    began = time.perf_counter()
    fn(n)
    return (time.perf_counter() - began) / n * 1e6


def interleaved(benches: dict[str, Callable[[int], None]], n: int, repeat: int) -> dict[str, float]:
    """Median µs per op; the contenders take turns so they share the machine's noise."""
    for fn in benches.values():
        fn(min(n, 2000))  # warm up
    runs: dict[str, list[float]] = {name: [] for name in benches}
    for _ in range(repeat):
        for name, fn in benches.items():
            runs[name].append(per_op_us(fn, n))
    return {name: statistics.median(values) for name, values in runs.items()}


def throughput(pairs: Callable[[int], None], threads: int, n: int) -> int:
    each = max(200, n // threads)
    workers = [threading.Thread(target=pairs, args=(each,)) for _ in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return round(threads * each / (time.perf_counter() - began))


def run(n: int, repeat: int) -> dict[str, Any]:
    echo = Echo.start()
    handle = start_pool(PoolSpec("bench", TokenFactory(), min_size=4, max_size=4))
    tokens: queue.Queue[int] = queue.Queue()
    for i in range(4):
        tokens.put(i)
    try:
        ask, acquire, release = echo.ask, handle.acquire, handle.release
        get, put = tokens.get, tokens.put

        def asks(k: int) -> None:
            for i in range(k):
                ask(i)

        def pairs(k: int) -> None:
            for _ in range(k):
                release(acquire(timeout=10))

        def queue_pairs(k: int) -> None:
            for _ in range(k):
                put(get(timeout=1))

        us = interleaved({"ask": asks, "pair": pairs, "queue": queue_pairs}, n, repeat)
        return {
            "pair_us": round(us["pair"], 2),
            "ask_us": round(us["ask"], 2),
            "queue_pool_us": round(us["queue"], 2),
            "ratio_to_ask": round(us["pair"] / us["ask"], 3),
            "pairs_per_s": {str(t): throughput(pairs, t, n) for t in (1, 4, 16)},
            "target_ratio_to_ask": 1.3,
            "pool_max_size": 4,
            "cpus": os.cpu_count(),
        }
    finally:
        handle.stop()
        echo.stop()


if __name__ == "__main__":
    cli(__doc__, run, pairs=5000, repeat=15)
