"""The demo's work, run in the worker processes: fetch -> transform -> batch insert.

``process_batch(ids)`` is the function ``Runtime.imap_unordered`` hands each worker:
for every id it fetches the item from the HTTP service (a session leased from the
``http`` pool, the call guarded by the ``api`` breaker), transforms it, looks it up in
PostgreSQL (a connection leased from the ``pg`` pool), then submits the rows to the
``rows`` batcher and returns the ids once every row is stored: an id returned is an
item acknowledged.

Every lease is logged (``holds-<pid>.log`` in the demo's directory: pool, resource,
wait, start, end on the machine-wide monotonic clock) so that the demo can check,
independently of lessor, that no resource was ever held twice at once and that the
global cap held (:mod:`lessor.demo.checks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import requests

import lessor
from lessor.errors import BreakerOpen, LessorError, PoolClosed

__all__ = ["ENV_DIR", "ENV_URL", "process_batch"]

ENV_DIR = "LESSOR_DEMO_DIR"
ENV_URL = "LESSOR_DEMO_URL"
#: How long an item keeps trying through failures before its batch fails (seconds).
ITEM_DEADLINE = 120.0
#: The wait between tries of a failed fetch or query (seconds).
RETRY_PAUSE = 0.05
#: Threads per worker process, each borrowing on its own.
THREADS = 2
#: The most a lookup holds its connection past the query (seconds, random).
THINK = 0.0005
#: What a leaking worker keeps per batch (bytes, written so the pages are resident).
LEAK_STEP = 24 << 20
#: What a step may fail with and be tried again: the service, the database, the pools.
RETRIED = (LessorError, OSError, ValueError, requests.RequestException, psycopg.Error)


class _Worker:
    """This process's handles, its hold log, and its leak (the ``--leak-memory`` fault)."""

    def __init__(self) -> None:
        client = lessor.connect()
        self.pg = client.pool("pg")
        self.http = client.pool("http")
        self.api = client.breaker("api")
        self.rows = client.batcher("rows")
        self.dir = os.environ[ENV_DIR]
        self.url = os.environ[ENV_URL]
        self.name = os.environ.get("LESSOR_WORKER_ID", str(os.getpid()))
        self.log = open(os.path.join(self.dir, f"holds-{os.getpid()}.log"), "a")  # noqa: SIM115
        self.leaked: list[bytes] = []
        self.leaking = False
        self.lock = threading.Lock()  # the log, written by the threads
        self.threads = ThreadPoolExecutor(THREADS, thread_name_prefix="demo-item")

    @contextlib.contextmanager
    def hold(self, kind: str, pool: Any) -> Iterator[Any]:
        """Lease from ``pool`` and log the hold, strictly inside the lease, even if the
        work with it failed (a resource granted twice may well break its second user)."""
        asked = time.monotonic_ns()
        with pool.lease(timeout=60) as resource:
            key = resource.info.backend_pid if kind == "pg" else f"{os.getpid()}-{id(resource)}"
            start = time.monotonic_ns()
            try:
                yield resource
            finally:
                end = time.monotonic_ns()
                with self.lock:
                    self.log.write(f"{kind} {key} {start - asked} {start} {end}\n")

    def maybe_leak(self) -> None:
        if not self.leaking:
            armed = os.path.join(self.dir, "leak-armed")
            with contextlib.suppress(OSError):  # one worker wins the rename
                os.rename(armed, os.path.join(self.dir, f"leak-taken-{os.getpid()}"))
                self.leaking = True
        if self.leaking:
            self.leaked.append(b"\x01" * LEAK_STEP)


_WORKER: list[_Worker] = []  # this process's, made on its first batch


def process_batch(ids: list[int]) -> list[int]:
    """Fetch, transform, look up and store each item; the ids, once all are stored.

    Items run on ``THREADS`` threads, as I/O-bound work does: each thread borrows on
    its own, so a resource granted twice in one process would be held twice at once.
    """
    if not _WORKER:
        _WORKER.append(_Worker())
    worker = _WORKER[0]
    worker.maybe_leak()
    rows = list(worker.threads.map(lambda i: _item(worker, i), ids))
    for future in worker.rows.submit_many(rows):
        future.result(timeout=ITEM_DEADLINE)
    with worker.lock:
        worker.log.flush()
    return ids


def _item(worker: _Worker, item: int) -> tuple[int, str, str]:
    value = _transform(_retrying(_fetch, worker, item))
    _retrying(_lookup, worker, item)
    return item, value, worker.name


def _retrying(step: Any, worker: _Worker, item: int) -> Any:
    """``step`` until it works: through an open breaker, 503s, a restarting database."""
    deadline = time.monotonic() + ITEM_DEADLINE
    while True:
        try:
            return step(worker, item)
        except BreakerOpen as exc:  # wait for the probes, not against the service
            pause = min(max(exc.remaining or 0.0, RETRY_PAUSE), 0.5)
        except PoolClosed:  # the runtime is going away: so is this item
            raise
        except RETRIED:
            pause = RETRY_PAUSE
        if time.monotonic() + pause > deadline:
            raise TimeoutError(f"item {item}: still failing after {ITEM_DEADLINE:g}s")
        time.sleep(pause)  # a retry's backoff, not a synchronisation


def _fetch(worker: _Worker, item: int) -> dict[str, Any]:
    with worker.hold("http", worker.http) as session:
        answer: dict[str, Any] = worker.api.call(_get, session, f"{worker.url}/items/{item}")
    return answer


def _get(session: Any, url: str) -> dict[str, Any]:
    response = session.get(url)
    response.raise_for_status()  # a 503 is a failure the breaker counts
    body: dict[str, Any] = response.json()
    return body


def _lookup(worker: _Worker, item: int) -> None:
    with worker.hold("pg", worker.pg) as conn:
        conn.execute("SELECT %s::int * 2", (item,)).fetchone()
        time.sleep(random.uniform(0.0, THINK))  # the job's own work with the connection


def _transform(body: dict[str, Any]) -> str:
    return hashlib.sha256(str(body["text"]).encode()).hexdigest()[:16]
