"""Benchmark: Acquire, SELECT 1, Release through lessor, psycopg_pool and SQLAlchemy.

Run by hand from the repository root, with the bench extra installed
(``pip install -e '.[dev,bench]'``): ``python tests/bench/bench_postgres.py [--json]``.
Uses LESSOR_PG_DSN, or starts the embedded PostgreSQL the tests use.
All figures come from the same run against the same server, the contenders taking
turns (medians of ``repeat`` rounds). Target: ``ratio_to_psycopg_pool <= 1.0``.

What each side does per iteration, one pooled connection each, no borrow check on
either side (psycopg_pool's default; ``PostgresFactory``'s unless ``check_idle_after``):

- ``lessor_us``: ``with db.lease() as conn: conn.execute("SELECT 1")``: ``BEGIN``,
  ``SELECT 1``; leaving the block sends ``COMMIT`` (``commit_on_exit``, as
  psycopg_pool's ``connection()``); the release then finds the connection IDLE, so
  the factory's ``reset`` sends nothing. Three round trips.
- ``psycopg_pool_us``: ``with pool.connection() as conn: conn.execute("SELECT 1")``:
  ``getconn`` (no check), ``BEGIN``, ``SELECT 1``; leaving ``with conn`` sends
  ``COMMIT``; ``putconn`` then finds the connection IDLE, so ``_reset_connection``
  sends nothing. Three round trips.
- ``sqlalchemy_us``: ``engine.connect()`` + ``exec_driver_sql("SELECT 1")``: ``BEGIN``,
  ``SELECT 1``, and ``ROLLBACK`` on return to its QueuePool (reset on return).
- ``*_autocommit_us``: lessor and psycopg_pool again with ``autocommit=True``
  connections: ``SELECT 1`` alone, one round trip; both pools find the connection IDLE
  on return and send nothing. This is where the pools' own overhead shows most.

``*_cached_us``: lessor again through cached handles (``start_pool(spec, cache=True)``):
the same round trips (the reset runs on the releasing thread before the connection
parks), without a turn of the pool's actor.

``round_trips`` counts the round trips each side makes in one iteration, the pool's
own work on return included (from libpq's protocol trace), so the comparison's
fairness is checked on every run.
``xproc_us`` is the lessor pair from a worker process on its process-scoped pool, and
``quota_connect_ms`` what the global quota adds to opening a connection there.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from common import Ops, cli, interleaved, postgres  # run as a script: this folder is on sys.path

import lessor
from lessor import PoolHandle, PoolSpec, Runtime, start_pool
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
            conn.close()  # discarded on release: the next lease opens a new one
    return statistics.median(times)


def via_lessor(db: PoolHandle) -> Ops:
    lease = db.lease

    def selects(k: int) -> None:
        for _ in range(k):
            with lease(timeout=10) as conn:
                conn.execute("SELECT 1")

    return selects


def via_psycopg_pool(pool: Any) -> Ops:
    connection = pool.connection

    def selects(k: int) -> None:
        for _ in range(k):
            with connection(timeout=10) as conn:
                conn.execute("SELECT 1")

    return selects


def via_sqlalchemy(engine: Any) -> Ops:
    connect = engine.connect

    def selects(k: int) -> None:
        for _ in range(k):
            with connect() as conn:
                conn.exec_driver_sql("SELECT 1")

    return selects


def round_trips(selects: Ops, borrow: Callable[[], Any], give_back: Callable[[Any], None]) -> int:
    """Messages sent to the server by one iteration, the pool's return work included.

    The pool holds one connection: ``borrow`` gets it (waiting out any return work
    still running elsewhere), ``give_back`` returns it.
    """
    from tests.support import pg  # on sys.path once postgres() ran

    held = borrow()
    conn = getattr(held, "resource", held)
    give_back(held)
    with pg.sent(conn) as messages:
        selects(1)
        held = borrow()  # the previous return's reset has finished
    give_back(held)
    return pg.round_trips(messages)


def run(n: int, repeat: int) -> dict[str, Any]:
    import psycopg
    import psycopg_pool
    import sqlalchemy

    with postgres() as dsn:
        db = start_pool(PoolSpec("pg", PostgresFactory(dsn), min_size=1, max_size=1))
        db_auto = start_pool(
            PoolSpec("pg-ac", PostgresFactory(dsn, autocommit=True), min_size=1, max_size=1)
        )
        db_cached = start_pool(
            PoolSpec("pg-c", PostgresFactory(dsn), min_size=1, max_size=1), cache=True
        )
        db_auto_cached = start_pool(
            PoolSpec("pg-ac-c", PostgresFactory(dsn, autocommit=True), min_size=1, max_size=1),
            cache=True,
        )
        pool = psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=1, open=False)
        pool_auto = psycopg_pool.ConnectionPool(
            dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
        )
        engine = sqlalchemy.create_engine(
            "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), pool_size=1
        )
        try:
            pool.open(wait=True, timeout=30)
            pool_auto.open(wait=True, timeout=30)
            contenders = {
                "lessor": via_lessor(db),
                "psycopg_pool": via_psycopg_pool(pool),
                "sqlalchemy": via_sqlalchemy(engine),
                "lessor_autocommit": via_lessor(db_auto),
                "psycopg_pool_autocommit": via_psycopg_pool(pool_auto),
                "lessor_cached": via_lessor(db_cached),
                "lessor_autocommit_cached": via_lessor(db_auto_cached),
            }
            trips = {
                "lessor": round_trips(contenders["lessor"], db.acquire, db.release),
                "psycopg_pool": round_trips(contenders["psycopg_pool"], pool.getconn, pool.putconn),
                "lessor_autocommit": round_trips(
                    contenders["lessor_autocommit"], db_auto.acquire, db_auto.release
                ),
                "psycopg_pool_autocommit": round_trips(
                    contenders["psycopg_pool_autocommit"], pool_auto.getconn, pool_auto.putconn
                ),
                "lessor_cached": round_trips(
                    contenders["lessor_cached"], db_cached.acquire, db_cached.release
                ),
            }
            us = interleaved(contenders, n, repeat)
        finally:
            db.stop()
            db_auto.stop()
            db_cached.stop()
            db_auto_cached.stop()
            pool.close()
            pool_auto.close()
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
    return {
        "lessor_us": round(us["lessor"], 1),
        "psycopg_pool_us": round(us["psycopg_pool"], 1),
        "sqlalchemy_us": round(us["sqlalchemy"], 1),
        "ratio_to_psycopg_pool": round(us["lessor"] / us["psycopg_pool"], 3),
        "lessor_autocommit_us": round(us["lessor_autocommit"], 1),
        "psycopg_pool_autocommit_us": round(us["psycopg_pool_autocommit"], 1),
        "autocommit_ratio_to_psycopg_pool": round(
            us["lessor_autocommit"] / us["psycopg_pool_autocommit"], 3
        ),
        "lessor_cached_us": round(us["lessor_cached"], 1),
        "ratio_to_psycopg_pool_cached": round(us["lessor_cached"] / us["psycopg_pool"], 3),
        "lessor_autocommit_cached_us": round(us["lessor_autocommit_cached"], 1),
        "autocommit_ratio_to_psycopg_pool_cached": round(
            us["lessor_autocommit_cached"] / us["psycopg_pool_autocommit"], 3
        ),
        "round_trips": trips,
        "target_ratio_to_psycopg_pool": 1.0,
        "xproc_us": round(xproc, 1),
        "quota_connect_ms": round(quota_ms - plain_connect_ms, 3),
        "plain_connect_ms": round(plain_connect_ms, 3),
        "pairs": n,
        "repeat": repeat,
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    cli(__doc__, run, pairs=2000, repeat=5)
