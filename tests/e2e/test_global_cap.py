"""One global limit on PostgreSQL connections across worker processes (two tiers)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lessor import PoolSpec, Runtime, TokenFactory
from lessor.adapters.postgres import PostgresFactory
from tests.support import pg
from tests.support.helpers import wait_until
from tests.workers import targets

SESSIONS_GONE_BOUND = 5.0  # seconds for the server to drop a SIGKILLed worker's sessions


def test_four_workers_never_open_more_than_max_total(server: pg.Postgres, tmp_path: Path) -> None:
    app = "lessor-cap"
    rt = Runtime(handle_signals=False)
    try:
        rt.add_pool(
            PoolSpec("pg", PostgresFactory(server.dsn, application_name=app), max_size=3,
                     scope="process", max_total=5)
        )  # fmt: skip
        quota = rt.quota("pg")  # the global quota: a token per connection open anywhere
        seen: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                seen.append(server.sessions(app))

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = tmp_path.parent / f"{tmp_path.name}-start"  # a start line: they contend
        start.mkdir()
        args = ("pg", 150, str(tmp_path), str(start), 4)
        group = rt.spawn_workers(targets.pg_hammer, 4, args=args, restart="transient")
        try:
            assert rt.join(group, timeout=120)
        finally:
            done.set()
            sampler.join()
        assert len(list(tmp_path.iterdir())) == 4
        assert max(seen) <= 5, f"saw {max(seen)} sessions"
        assert max(seen) >= 4  # the cap was actually contended for
        stats = quota.stats()
        assert stats.leased == 0 and stats.acquired == stats.released
    finally:
        rt.shutdown(timeout=5)
    assert server.sessions(app) == 0


def test_a_killed_workers_quota_and_sessions_come_back(server: pg.Postgres, tmp_path: Path) -> None:
    app = "lessor-kill"
    rt = Runtime(handle_signals=False)
    try:
        rt.add_pool(
            PoolSpec("pg", PostgresFactory(server.dsn, application_name=app), max_size=3,
                     scope="process", max_total=3)
        )  # fmt: skip
        quota = rt.quota("pg")  # the global quota: a token per connection open anywhere
        rt.spawn_workers(targets.pg_hold, 1, args=("pg", 2, str(tmp_path)), restart="temporary")
        assert wait_until(lambda: len(list(tmp_path.iterdir())) == 1, timeout=30)
        (ready,) = tmp_path.iterdir()
        assert quota.stats().leased == 2 and server.sessions(app) == 2
        os.kill(int(ready.name), signal.SIGKILL)
        assert wait_until(lambda: quota.stats().leased == 0, timeout=1)
        assert wait_until(lambda: server.sessions(app) == 0, timeout=SESSIONS_GONE_BOUND)
    finally:
        rt.shutdown(timeout=5)


def test_idle_quota_in_one_worker_flows_to_a_worker_that_waits(
    server: pg.Postgres, tmp_path: Path
) -> None:
    app = "lessor-rebalance"
    idle_dir, busy_dir = tmp_path / "idle", tmp_path / "busy"
    idle_dir.mkdir()
    busy_dir.mkdir()
    rt = Runtime(handle_signals=False)
    try:
        rt.add_pool(
            PoolSpec("pg", PostgresFactory(server.dsn, application_name=app), max_size=3,
                     scope="process", max_total=3, max_idle=60)
        )  # fmt: skip
        quota = rt.quota("pg")  # the global quota: a token per connection open anywhere
        rt.spawn_workers(targets.pg_warm_then_idle, 1, args=("pg", 3, str(idle_dir)),
                         restart="temporary", name="hoarder")  # fmt: skip
        assert wait_until(lambda: len(list(idle_dir.iterdir())) == 1, timeout=30)
        assert quota.stats().leased == 3  # all quota sits in the hoarder's idle connections
        began = time.monotonic()
        group = rt.spawn_workers(targets.pg_hammer, 1, args=("pg", 20, str(busy_dir)),
                                 restart="transient", name="busy")  # fmt: skip
        assert rt.join(group, timeout=30)
        # Served long before the hoarder's idle connections would expire (10 s locally):
        assert time.monotonic() - began < 5
        print(f"a waiting worker got idle quota from another in {time.monotonic() - began:.2f}s")
        assert server.sessions(app) <= 3
    finally:
        rt.shutdown(timeout=0.5)  # the hoarder never exits by itself


def test_worker_pools_recover_when_the_server_restarts(tmp_path: Path) -> None:
    """Dead connections in a worker's own pool are replaced, and their quota comes back."""
    own = pg.start()  # a server of its own: this test crashes it
    if own.server is None:
        pg.stop(own)
        pytest.skip("needs the embedded server (LESSOR_PG_DSN is set)")
    app = "lessor-worker-restart"
    rt = Runtime(handle_signals=False)
    try:
        rt.add_pool(
            PoolSpec("pg", PostgresFactory(own.dsn, application_name=app, check_idle_after=0),
                     max_size=2, scope="process", max_total=2,
                     create_backoff=0.05, create_backoff_max=0.2)
        )  # fmt: skip
        quota = rt.quota("pg")  # the global quota: a token per connection open anywhere
        gate = rt.add_pool(PoolSpec("gate", TokenFactory(), max_size=1))
        held = gate.acquire(timeout=10)  # the worker waits here while the server restarts
        group = rt.spawn_workers(
            targets.pg_through_restart, 1, args=("pg", "gate", 2, str(tmp_path)),
            restart="transient",
        )  # fmt: skip
        assert wait_until((tmp_path / "warm").exists, timeout=30)
        assert quota.stats().leased == 2 and own.sessions(app) == 2
        own.stop_immediately()  # both idle connections in the worker are now dead
        own.start_again()
        gate.release(held)
        assert rt.join(group, timeout=60)
        assert (tmp_path / "answers").read_text() == "1 1 1 1 1"
        stats = quota.stats()
        # The worker closed what it had on exit: every quota lease came back, none lost
        # to the dead connections (their destroy gave theirs back too).
        assert stats.leased == 0 and stats.acquired == stats.released >= 3
        assert stats.reclaimed == 0
    finally:
        rt.shutdown(timeout=5)
        pg.stop(own)
