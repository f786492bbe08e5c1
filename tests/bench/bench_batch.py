"""Benchmark: rows into PostgreSQL through a batcher fed by worker processes.

Run by hand from the repository root: ``python tests/bench/bench_batch.py [--json]
[--pairs ROWS] [--repeat R]``. All figures come from the same run on the same machine
and the same PostgreSQL (``LESSOR_PG_DSN``, or the embedded one the tests use), the
contenders taking turns, ``--repeat`` rounds; each figure is the median. The table is
``(id bigint PRIMARY KEY, kind text, n int)``, emptied before each contender; every
insert is ``INSERT ... ON CONFLICT (id) DO NOTHING`` (idempotent, as the batcher's
at-least-once delivery asks), except plain ``COPY``.

- ``rows_per_s_batched``: 4 worker processes (``runtime.spawn_workers``) submit
  ``ROWS`` rows in all, one ``submit()`` per row, to a batcher whose processor is
  ``CopySink(key=["id"])`` (``max_batch_size=500``, ``max_in_flight=2``), and wait
  for every row's Future. Timed from the start signal to the last worker's last
  result. ``rows_per_s_batched_insert``: the same with ``InsertSink(key=["id"])``
  (the very statement the executemany figure runs); ``rows_per_s_batched_many``: the
  same as ``batched`` with each worker handing in its rows with ``submit_many``, 500
  at a time.
- ``rows_per_s_row_by_row``: 4 worker processes, each inserting its rows one by one
  through a pooled connection (a process-scoped lessor pool of ``PostgresFactory``:
  ``with pool.lease() as conn: conn.execute(...)``, committed on leaving), ``ROWS/5``
  rows in all.
- ``rows_per_s_executemany``: one process, one connection, ``executemany`` of 500
  rows per transaction.
- ``rows_per_s_copy``: one process, one connection, plain ``COPY`` of 500 rows per
  transaction (no conflict check: the floor of what PostgreSQL takes).
- ``submit_us``: in a worker, the cost of ``submit()`` per item (the loop of
  ``submit`` calls only), with a processor that returns at once.

Targets: ``rows_per_s_batched >= rows_per_s_executemany`` (the cross-process path
hides its cost) and ``rows_per_s_batched >= 10 * rows_per_s_row_by_row``.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from typing import Any

import psycopg
from common import cli, postgres  # run as a script: this folder is on sys.path

import lessor
from lessor import BatchSpec, PoolSpec, Runtime
from lessor.adapters.postgres import CopySink, InsertSink, PostgresFactory

WORKERS = 4
BATCH = 500
TABLE = "lessor_bench_rows"
COLUMNS = ("id", "kind", "n")
INSERT = f"INSERT INTO {TABLE} (id, kind, n) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING"
#: Seconds a round may take before the benchmark gives up on it.
ROUND_TIMEOUT = 300.0


def _rows(start: int, stop: int) -> list[tuple[int, str, int]]:
    return [(i, "click", i % 97) for i in range(start, stop)]


# -- in the worker processes -----------------------------------------------------------


def submit_rows(start: int, stop: int, ready: Any, go: Any, done: Any) -> None:
    batcher = lessor.connect().batcher("rows")
    rows = _rows(start, stop)
    ready.put(os.getpid())
    go.wait(ROUND_TIMEOUT)
    futures = [batcher.submit(row) for row in rows]
    for future in futures:
        future.result(ROUND_TIMEOUT)
    done.put(time.monotonic())


def submit_many_rows(start: int, stop: int, ready: Any, go: Any, done: Any) -> None:
    batcher = lessor.connect().batcher("rows")
    rows = _rows(start, stop)
    ready.put(os.getpid())
    go.wait(ROUND_TIMEOUT)
    futures = []
    for at in range(0, len(rows), BATCH):
        futures += batcher.submit_many(rows[at : at + BATCH])
    for future in futures:
        future.result(ROUND_TIMEOUT)
    done.put(time.monotonic())


def insert_rows(start: int, stop: int, ready: Any, go: Any, done: Any) -> None:
    pool = lessor.connect().pool("pg")
    rows = _rows(start, stop)
    with pool.lease() as conn:  # the connection exists before the clock starts
        conn.execute("SELECT 1")
    ready.put(os.getpid())
    go.wait(ROUND_TIMEOUT)
    for row in rows:
        with pool.lease() as conn:
            conn.execute(INSERT, row)
    done.put(time.monotonic())


def time_submits(n: int, done: Any) -> None:
    batcher = lessor.connect().batcher("echo")
    began = time.perf_counter()
    futures = [batcher.submit(i) for i in range(n)]
    took = time.perf_counter() - began
    for future in futures:
        future.result(ROUND_TIMEOUT)
    done.put(took / n * 1e6)


def echo(items: list[Any]) -> list[Any]:
    return items


# -- in the benchmark's process --------------------------------------------------------


def _fan_out(runtime: Runtime, target: Any, rows: int) -> float:
    """Rows per second of WORKERS processes running ``target`` on their share of rows."""
    ctx = multiprocessing.get_context("spawn")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    share = rows // WORKERS
    groups = [
        runtime.spawn_workers(target, 1, (w * share, (w + 1) * share, ready, go, done))
        for w in range(WORKERS)
    ]
    for _ in groups:
        ready.get(timeout=ROUND_TIMEOUT)
    began = time.monotonic()
    go.set()
    ends = [done.get(timeout=ROUND_TIMEOUT) for _ in groups]
    for group in groups:
        runtime.join(group, ROUND_TIMEOUT)
    return share * WORKERS / (max(ends) - began)


def _empty(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE}")


def _stored(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    assert row is not None
    return int(row[0])


def batched(dsn: str, rows: int, sink_class: Any = CopySink, producer: Any = submit_rows) -> float:
    sink = sink_class(dsn, TABLE, COLUMNS, key=["id"])
    spec = BatchSpec("rows", sink, max_batch_size=BATCH, max_wait=0.01, max_in_flight=2)
    try:
        with Runtime(handle_signals=False) as runtime:
            runtime.add_batcher(spec)
            rate = _fan_out(runtime, producer, rows)
    finally:
        sink.close()
    assert _stored(dsn) == rows // WORKERS * WORKERS, "the batcher lost rows"
    return rate


def row_by_row(dsn: str, rows: int) -> float:
    spec = PoolSpec("pg", PostgresFactory(dsn), max_size=1, scope="process", max_total=WORKERS)
    with Runtime(handle_signals=False) as runtime:
        runtime.add_pool(spec)
        return _fan_out(runtime, insert_rows, rows)


def executemany(dsn: str, rows: int) -> float:
    data = _rows(0, rows)
    with psycopg.connect(dsn) as conn:
        began = time.monotonic()
        for at in range(0, rows, BATCH):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(INSERT, data[at : at + BATCH])
        return rows / (time.monotonic() - began)


def copy(dsn: str, rows: int) -> float:
    data = _rows(0, rows)
    with psycopg.connect(dsn) as conn:
        began = time.monotonic()
        for at in range(0, rows, BATCH):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY {TABLE} (id, kind, n) FROM STDIN") as out,
            ):
                for row in data[at : at + BATCH]:
                    out.write_row(row)
        return rows / (time.monotonic() - began)


def submit_cost(n: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Queue()
    spec = BatchSpec("echo", echo, max_batch_size=BATCH, max_pending=max(n, 1))
    with Runtime(handle_signals=False) as runtime:
        runtime.add_batcher(spec)
        group = runtime.spawn_workers(time_submits, 1, (n, done))
        us: float = done.get(timeout=ROUND_TIMEOUT)
        runtime.join(group, ROUND_TIMEOUT)
    return us


def run(rows: int, repeat: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    names = ("batched", "batched_insert", "batched_many", "row_by_row", "executemany", "copy")
    figures: dict[str, list[float]] = {name: [] for name in (*names, "submit_us")}
    with postgres() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, kind text, n int)")
        contenders = {
            "batched": lambda: batched(dsn, rows),
            "batched_insert": lambda: batched(dsn, rows, InsertSink),
            "batched_many": lambda: batched(dsn, rows, CopySink, submit_many_rows),
            "row_by_row": lambda: row_by_row(dsn, max(rows // 5, WORKERS)),
            "executemany": lambda: executemany(dsn, rows),
            "copy": lambda: copy(dsn, rows),
        }
        for _ in range(repeat):
            for name, contender in contenders.items():
                _empty(dsn)
                figures[name].append(contender())
            figures["submit_us"].append(submit_cost(rows))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {TABLE}")
    median = {name: statistics.median(values) for name, values in figures.items()}
    return {
        "rows_per_s_batched": round(median["batched"]),
        "rows_per_s_batched_insert": round(median["batched_insert"]),
        "rows_per_s_batched_many": round(median["batched_many"]),
        "rows_per_s_row_by_row": round(median["row_by_row"]),
        "rows_per_s_executemany": round(median["executemany"]),
        "rows_per_s_copy": round(median["copy"]),
        "submit_us": round(median["submit_us"], 2),
        "batched_to_executemany": round(median["batched"] / median["executemany"], 3),
        "batched_to_row_by_row": round(median["batched"] / median["row_by_row"], 2),
        "each": {name: [round(v, 2) for v in values] for name, values in figures.items()},
        "rows": rows,
        "note": f"{WORKERS} workers submit or insert; executemany and COPY from one process, "
        f"{BATCH} rows per transaction; batcher: CopySink (InsertSink for batched_insert), "
        "max_in_flight=2",
        "targets": {
            "rows_per_s_batched": ">= rows_per_s_executemany and >= 10 * rows_per_s_row_by_row"
        },
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(load, 2),
    }


if __name__ == "__main__":
    cli(__doc__, run, pairs=40_000, repeat=3)
