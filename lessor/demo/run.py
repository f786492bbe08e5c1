"""``lessor demo``: the whole job on embedded defaults, with faults, a live view and a report.

It starts an embedded PostgreSQL and a local HTTP service, then a runtime with a
process-scoped PostgreSQL pool under a global ``max_total``, an HTTP pool behind the
``api`` circuit breaker, the ``rows`` batcher writing to PostgreSQL and the memory
manager; ``workers`` processes work through the items (:mod:`lessor.demo.job`) while
the scene injects faults (:mod:`lessor.demo.scene`). On a terminal a live view shows
the tree; elsewhere plain progress lines go to stderr. The report ends it, and the
exit code says whether both checks passed (:mod:`lessor.demo.checks`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lessor.demo.checks import read_holds, run_checks
from lessor.demo.job import ENV_DIR, ENV_URL, process_batch
from lessor.demo.postgres import EmbeddedPostgres
from lessor.demo.report import DemoReport, make_report
from lessor.demo.scene import Scene
from lessor.demo.service import ItemService
from lessor.errors import LessorError
from lessor.factory import Factory
from lessor.runtime.runtime import Runtime
from lessor.specs import BatchSpec, BreakerSpec, PoolSpec
from lessor.specs.memory import MemorySpec

__all__ = ["DemoOptions", "run_demo"]

#: Seconds between plain progress lines on a non-terminal.
PLAIN_EVERY = 2.0


@dataclass(frozen=True)
class DemoOptions:
    """What ``lessor demo`` runs; each flag of the command is one field.

    - ``items`` (default 20,000) through ``workers`` (default 4) processes, ``batch``
      (default 50) items per task.
    - ``pg_max_total`` (default 3) and ``http_max_total`` (default 4): the global caps of
      the two process-scoped pools (each process holds at most 2 of each).
    - ``scene`` (default True): the scripted faults, ``scene_faults`` (default a kill,
      an HTTP burst, a leak), at 15%, 35% and 55% of the items;
      ``kill_workers`` (default 0) more kills, ``http_failure_rate`` (default 0.0, a
      fraction) and ``http_latency`` (default 0.001 s) of the service, ``leak_memory``
      and ``restart_db`` (default False) add faults.
    - ``worker_memory`` (default 320 MB): each worker's memory limit (bytes).
    - ``metrics_port`` (default None: off): serve Prometheus metrics on 127.0.0.1.
    - ``pg_factory`` (default None: ``PostgresFactory``): for tests of the checks.
    """

    items: int = 20_000
    workers: int = 4
    batch: int = 50
    pg_max_total: int = 3
    http_max_total: int = 4
    scene: bool = True
    scene_faults: tuple[str, ...] = ("kill", "http_burst", "leak")
    kill_workers: int = 0
    http_failure_rate: float = 0.0
    http_latency: float = 0.001
    leak_memory: bool = False
    restart_db: bool = False
    worker_memory: int = 320 * 10**6
    metrics_port: int | None = None
    pg_factory: Factory[Any] | None = None

    def __post_init__(self) -> None:
        for name in ("items", "workers", "batch", "pg_max_total", "http_max_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.http_failure_rate <= 1.0:
            raise ValueError(f"http_failure_rate must be in [0, 1], got {self.http_failure_rate}")

    def steps(self) -> list[tuple[float, str]]:
        """The faults, at the fraction of the items done when each is injected."""
        at = (0.15, 0.35, 0.55, 0.75)
        steps = list(zip(at, self.scene_faults, strict=False)) if self.scene else []
        steps += [(0.2 + 0.6 * i / max(1, self.kill_workers), "kill")
                  for i in range(self.kill_workers)]  # fmt: skip
        if self.leak_memory and "leak" not in [kind for _, kind in steps]:
            steps.append((0.5, "leak"))
        if self.restart_db:
            steps.append((0.75, "restart_db"))
        return steps


def run_demo(options: DemoOptions, console: Any = None) -> DemoReport:
    """Run the demo; the report (``report.ok``: both checks passed)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(EmbeddedPostgres())
        service = stack.enter_context(ItemService(options.http_failure_rate, options.http_latency))
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="lessor-demo-"))
        table = _make_table(database.dsn, stack)
        stack.enter_context(_environment({ENV_DIR: directory, ENV_URL: service.url}))
        runtime = stack.enter_context(
            Runtime(control=True, metrics_port=options.metrics_port, shutdown_timeout=10.0)
        )
        _build(runtime, database.dsn, table, options)
        batches = [list(range(i, min(i + options.batch, options.items)))
                   for i in range(0, options.items, options.batch)]  # fmt: skip
        acknowledged: set[int] = set()
        began = time.monotonic()
        scene = Scene(runtime, options.steps(), service=service, database=database,
                      directory=directory, base_failure_rate=options.http_failure_rate,
                      done=lambda: len(acknowledged) / options.items)  # fmt: skip
        results = runtime.imap_unordered(process_batch, batches, options.workers,
                                         max_restarts=50)  # fmt: skip
        with results, scene, _View(runtime, console, options.items, lambda: len(acknowledged)):
            for ids in results:
                acknowledged.update(ids)
        duration = time.monotonic() - began
        status = runtime.status()
        stored = _ids_in(database.dsn, table)
        holds = read_holds(directory)
        caps = {"pg": options.pg_max_total, "http": options.http_max_total}
        report = make_report(
            items=options.items, acknowledged=len(acknowledged), rows=len(stored),
            workers=options.workers, duration_s=duration, status=status, holds=holds,
            faults=[f.as_dict() for f in scene.faults],
            checks=run_checks(stored, acknowledged, holds, caps),
        )  # fmt: skip
        shutdown = runtime.shutdown()
        report.shutdown.update(clean=shutdown.clean, duration_s=round(shutdown.duration_s, 3),
                               reclaimed=len(shutdown.reclaimed))  # fmt: skip
    return report


def _build(runtime: Runtime, dsn: str, table: str, options: DemoOptions) -> None:
    from urllib3.util.retry import Retry

    from lessor.adapters.http import HttpSessionFactory
    from lessor.adapters.postgres import PostgresFactory
    from lessor.adapters.postgres_sink import InsertSink

    # Judged over the last 20 calls once 10 were made: half failing opens it for 0.5 s.
    runtime.add_breaker(BreakerSpec("api", window_size=20, minimum_calls=10,
                                    failure_rate_threshold=50.0, open_duration=0.5,
                                    half_open_calls=4))  # fmt: skip
    pg = options.pg_factory or PostgresFactory(dsn, application_name="lessor-demo")
    runtime.add_pool(PoolSpec("pg", pg, max_size=2, scope="process",
                              max_total=options.pg_max_total, acquire_timeout=60.0))  # fmt: skip
    sessions = HttpSessionFactory(retries=Retry(total=0), timeout=(2.0, 5.0))
    runtime.add_pool(PoolSpec("http", sessions, max_size=2, scope="process",
                              max_total=options.http_max_total, breaker="api"))  # fmt: skip
    sink = InsertSink(dsn, table, ("id", "value", "worker"), key=("id",),
                      application_name="lessor-demo-sink")  # fmt: skip
    runtime.add_batcher(BatchSpec("rows", sink, max_batch_size=200, max_wait=0.05))
    runtime.add_memory(MemorySpec(max_memory=options.worker_memory, interval=0.1,
                                  recycle_grace=2.0, max_pause=3.0))  # fmt: skip


def _make_table(dsn: str, stack: contextlib.ExitStack) -> str:
    import psycopg

    table = f"lessor_demo_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, value text NOT NULL, "
                     "worker text NOT NULL)")  # fmt: skip

    def drop() -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")

    stack.callback(drop)
    return table


def _ids_in(dsn: str, table: str) -> set[int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute(f"SELECT id FROM {table}")}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set for the workers, which are spawned with this process's environment."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _View:
    """A live view of the tree with a progress bar on a terminal; plain lines elsewhere."""

    def __init__(self, runtime: Runtime, console: Any, total: int, done: Any) -> None:
        self.runtime, self.console, self.total, self.done = runtime, console, total, done
        self.began = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: dict[str, Any] | None = None

    def __enter__(self) -> _View:
        self._thread = threading.Thread(target=self._run, name="lessor-demo-view", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _snapshot(self) -> dict[str, Any] | None:
        with contextlib.suppress(LessorError):
            self._status = self.runtime.status().as_dict()
        return self._status

    def _run(self) -> None:
        if self.console.is_terminal:
            self._live()
            return
        from lessor.cli.view import plain_line

        while not self._stop.wait(PLAIN_EVERY):
            status = self._snapshot()
            line = plain_line(status) if status else ""
            self.console.print(f"{self._progress_text()} {line}", markup=False, highlight=False)

    def _progress_text(self) -> str:
        done, elapsed = self.done(), time.monotonic() - self.began
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        return f"[{elapsed:6.1f}s] {done}/{self.total} items, {rate:.0f}/s, eta {eta:.0f}s"

    def _live(self) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        from lessor.cli.view import render

        bar = Progress(TextColumn("items"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]:.0f}/s"), TimeRemainingColumn(),
                       console=self.console)  # fmt: skip
        task = bar.add_task("items", total=self.total, rate=0.0)
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:
            while not self._stop.wait(0.25):
                done, elapsed = self.done(), time.monotonic() - self.began
                bar.update(task, completed=done, rate=done / elapsed if elapsed else 0.0)
                status = self._snapshot()
                live.update(Group(bar, render(status)) if status else bar)
