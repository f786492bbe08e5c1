"""Benchmark: Acquire, SELECT 1, Release through lessor, psycopg_pool and SQLAlchemy.

Run by hand from the repository root, with the bench extra installed
(``pip install -e '.[dev,bench]'``): ``python tests/bench/bench_postgres.py [--json]``.
Uses LESSOR_PG_DSN, or starts PostgreSQL from the pgserver wheel in a temp dir.
All figures come from the same run against the same server.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from common import cli  # run as a script: this folder is on sys.path

import lessor
from lessor import PoolSpec, Runtime, start_pool
from lessor.adapters.postgres import PostgresFactory


def timed_us(fn: Callable[[], Any], n: int) -> float:
    for _ in range(min(200, n)):
        fn()
    began = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - began) / n * 1e6


def worker_select(job: list[Any]) -> float:
    """In a worker: µs per Acquire + SELECT 1 + Release on its process-scoped pool."""
    _, n = job
    db = lessor.connect().pool("pg")

    def once() -> None:
        with db.lease(timeout=30) as conn:
            conn.execute("SELECT 1")

    return timed_us(once, n)


def quota_worker(job: list[Any]) -> float:
    """In a worker: ms to open a connection through the quota tier (fresh pool each time)."""
    _, n = job
    db = lessor.connect().pool("pg")
    times = []
    for _ in range(n):
        began = time.perf_counter()
        with db.lease(timeout=30) as conn:
            times.append((time.perf_counter() - began) * 1000)
            conn.close()  # broken on release: the next lease opens a new one
    return statistics.median(times)


def run(n: int, repeat: int) -> dict[str, Any]:
    import psycopg
    import psycopg_pool
    import sqlalchemy

    server = None
    dsn = os.environ.get("LESSOR_PG_DSN")
    if not dsn:
        import pgserver

        server = pgserver.get_server(tempfile.mkdtemp(), cleanup_mode="stop")
        dsn = server.get_uri()
    try:
        lessor_pool = start_pool(PoolSpec("pg", PostgresFactory(dsn), min_size=1, max_size=1))
        ppool = psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=1, open=True)
        engine = sqlalchemy.create_engine(
            "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), pool_size=1
        )

        def via_lessor() -> None:
            with lessor_pool.lease(timeout=10) as conn:
                conn.execute("SELECT 1")

        def via_psycopg_pool() -> None:
            with ppool.connection() as conn:
                conn.execute("SELECT 1")

        def via_sqlalchemy() -> None:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")

        runs: dict[str, list[float]] = {"lessor": [], "psycopg_pool": [], "sqlalchemy": []}
        for _ in range(repeat):  # interleaved: all see the same noise
            runs["lessor"].append(timed_us(via_lessor, n))
            runs["psycopg_pool"].append(timed_us(via_psycopg_pool, n))
            runs["sqlalchemy"].append(timed_us(via_sqlalchemy, n))
        lessor_pool.stop()
        ppool.close()
        engine.dispose()
        plain_connect_ms = statistics.median(
            timed_us(lambda: psycopg.connect(dsn).close(), 1) / 1000 for _ in range(20)
        )
        with Runtime(handle_signals=False) as runtime:
            runtime.add_pool(
                PoolSpec("pg", PostgresFactory(dsn), max_size=1, scope="process", max_total=2)
            )
            xproc = runtime.map(worker_select, [["pg", n]], workers=1)[0]
            quota_ms = runtime.map(quota_worker, [["pg", 20]], workers=1)[0]
        median = {name: statistics.median(values) for name, values in runs.items()}
        return {
            "lessor_us": round(median["lessor"], 1),
            "psycopg_pool_us": round(median["psycopg_pool"], 1),
            "sqlalchemy_us": round(median["sqlalchemy"], 1),
            "xproc_us": round(xproc, 1),
            "quota_connect_ms": round(quota_ms - plain_connect_ms, 3),
            "plain_connect_ms": round(plain_connect_ms, 3),
            "ratio_to_psycopg_pool": round(median["lessor"] / median["psycopg_pool"], 3),
            "cpus": os.cpu_count(),
        }
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    cli(__doc__, run, pairs=2000, repeat=5)
