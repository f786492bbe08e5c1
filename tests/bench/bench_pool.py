"""Benchmark: an in-process lessor Acquire+Release against psycopg_pool and a queue.Queue pool.

Run by hand from the repository root: ``python tests/bench/bench_pool.py [--json]
[--pairs N] [--repeat R]``. Uses LESSOR_PG_DSN, or starts the embedded PostgreSQL.
All figures come from the same run on the same machine; targets are ratios.
Target: ``ratio_to_psycopg_pool <= 1.0`` (the default handle; ``..._cached`` for
the cached one).

Per pair, one thread, nobody else waiting, each side through its public API:

- ``pair_us``: ``lease = handle.acquire()``, read ``lease.resource``,
  ``handle.release(lease)``, on a 4-token ``TokenFactory`` pool (no check, no reset);
- ``lease_block_us``: the same through ``with handle.lease() as token:``;
- ``pair_cached_us``, ``lease_block_cached_us``: the same through a cached handle
  (``start_pool(spec, cache=True)``): leases parked in the process's lease cache
  and lent again without a turn of the pool's actor (see lessor.handles.cached);
- ``psycopg_pool_pair_us``: ``conn = pool.getconn()``, ``pool.putconn(conn)`` on a
  4-connection ``psycopg_pool.ConnectionPool`` with no ``check`` and no ``reset``.
  Nothing reaches the server: the connection stays IDLE, so putconn's
  ``_reset_connection`` does nothing;
- ``queue_pool_us``: ``token = q.get()``, ``q.put(token)`` (the floor for a pool);
- ``ask_us``: one pykka ask to an echo actor (the thread hand-off the pair used to cost).

``pairs_per_s`` (``pairs_per_s_cached``, ``psycopg_pool_pairs_per_s``): total pairs/s with 1, 4
and 16 threads sharing the 4-resource pool, each doing the pair above in a loop. The
threads start together at a barrier; each figure is the median of ``repeat`` rounds,
lessor and psycopg_pool taking turns.
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from typing import Any

import psycopg_pool
import pykka
from common import Ops, cli, interleaved, postgres  # run as a script: this folder is on sys.path

from lessor import PoolHandle, PoolSpec, TokenFactory, start_pool

SIZE = 4
THREADS = (1, 4, 16)


class Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def lessor_pairs(handle: PoolHandle) -> Ops:
    acquire, release = handle.acquire, handle.release

    def pairs(k: int) -> None:
        held = None
        for _ in range(k):
            lease = acquire(timeout=30)
            held = lease.resource  # the holder has it in hand, between the two calls
            release(lease)
        assert held is not None

    return pairs


def lessor_blocks(handle: PoolHandle) -> Ops:
    lease = handle.lease

    def blocks(k: int) -> None:
        held = None
        for _ in range(k):
            with lease(timeout=30) as token:
                held = token
        assert held is not None

    return blocks


def psycopg_pool_pairs(pool: psycopg_pool.ConnectionPool[Any]) -> Ops:
    getconn, putconn = pool.getconn, pool.putconn

    def pairs(k: int) -> None:
        for _ in range(k):
            conn = getconn(timeout=30)
            assert not conn.closed  # the holder has it in hand (an attribute, no I/O)
            putconn(conn)

    return pairs


def queue_pairs(tokens: queue.Queue[int]) -> Ops:
    get, put = tokens.get, tokens.put

    def pairs(k: int) -> None:
        for _ in range(k):
            token = get(timeout=30)
            put(token)

    return pairs


def asks(echo: pykka.ActorRef[Any]) -> Ops:
    ask = echo.ask

    def run(k: int) -> None:
        for i in range(k):
            ask(i)

    return run


def pairs_per_s(pairs: Ops, threads: int, n: int) -> float:
    """Pairs per second for ``threads`` threads doing ``n`` pairs between them."""
    each = max(200, n // threads)
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            pairs(each)
        except BaseException as exc:  # reported below: a failed round is no figure
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return threads * each / elapsed


def throughput(contenders: dict[str, Ops], n: int, repeat: int) -> dict[str, dict[str, int]]:
    """Median pairs/s per contender and thread count, the contenders taking turns."""
    runs: dict[tuple[str, int], list[float]] = {}
    for pairs in contenders.values():
        for threads in THREADS:
            pairs_per_s(pairs, threads, min(n, 2000))  # warm up (threads, waiters)
    for _ in range(repeat):
        for threads in THREADS:
            for name, pairs in contenders.items():
                runs.setdefault((name, threads), []).append(pairs_per_s(pairs, threads, n))
    return {
        name: {str(t): round(statistics.median(runs[name, t])) for t in THREADS}
        for name in contenders
    }


def run(n: int, repeat: int) -> dict[str, Any]:
    with postgres() as dsn:
        echo = Echo.start()
        handle = start_pool(PoolSpec("bench", TokenFactory(), min_size=SIZE, max_size=SIZE))
        spec = PoolSpec("bench-cached", TokenFactory(), min_size=SIZE, max_size=SIZE)
        cached = start_pool(spec, cache=True)
        pool = psycopg_pool.ConnectionPool(dsn, min_size=SIZE, max_size=SIZE, open=False)
        tokens: queue.Queue[int] = queue.Queue()
        for i in range(SIZE):
            tokens.put(i)
        try:
            pool.open(wait=True, timeout=30)
            pair, ppool = lessor_pairs(handle), psycopg_pool_pairs(pool)
            pair_cached = lessor_pairs(cached)
            us = interleaved(
                {
                    "pair": pair,
                    "block": lessor_blocks(handle),
                    "pair_cached": pair_cached,
                    "block_cached": lessor_blocks(cached),
                    "psycopg_pool": ppool,
                    "queue": queue_pairs(tokens),
                    "ask": asks(echo),
                },
                n,
                repeat,
            )
            rates = throughput(
                {"lessor": pair, "lessor_cached": pair_cached, "psycopg_pool": ppool},
                n,
                max(3, repeat // 3),
            )
            stats = handle.stats()
            assert stats.acquired == stats.released and stats.leased == 0
        finally:
            pool.close()
            handle.stop()
            cached.stop()
            echo.stop()
    return {
        "pair_us": round(us["pair"], 2),
        "lease_block_us": round(us["block"], 2),
        "psycopg_pool_pair_us": round(us["psycopg_pool"], 2),
        "queue_pool_us": round(us["queue"], 2),
        "ask_us": round(us["ask"], 2),
        "ratio_to_psycopg_pool": round(us["pair"] / us["psycopg_pool"], 3),
        "pair_cached_us": round(us["pair_cached"], 2),
        "lease_block_cached_us": round(us["block_cached"], 2),
        "ratio_to_psycopg_pool_cached": round(us["pair_cached"] / us["psycopg_pool"], 3),
        "ratio_to_queue_pool": round(us["pair"] / us["queue"], 3),
        "ratio_to_ask": round(us["pair"] / us["ask"], 3),
        "pairs_per_s": rates["lessor"],
        "pairs_per_s_cached": rates["lessor_cached"],
        "psycopg_pool_pairs_per_s": rates["psycopg_pool"],
        "target_ratio_to_psycopg_pool": 1.0,
        "pool_size": SIZE,
        "pairs": n,
        "repeat": repeat,
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    cli(__doc__, run, pairs=5000, repeat=15)
