"""PostgreSQL through lessor pools, against a real server (no mocks of psycopg)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from lessor import AcquireTimeout, PoolHandle, PoolSpec, start_pool
from lessor.adapters.postgres import PostgresFactory
from tests import pg
from tests.conftest import wait_until

_names = itertools.count(1)


@pytest.fixture(scope="module")
def server() -> Iterator[pg.Postgres]:
    postgres = pg.start()
    yield postgres
    pg.stop(postgres)


@pytest.fixture
def app() -> str:
    return f"lessor-test-{next(_names)}"


@pytest.fixture
def pools() -> Iterator[list[PoolHandle]]:
    handles: list[PoolHandle] = []
    yield handles
    for handle in handles:
        handle.stop(timeout=10)


def pool(pools: list[PoolHandle], factory: PostgresFactory, **fields: object) -> PoolHandle:
    handle = start_pool(PoolSpec("pg", factory, **fields))  # type: ignore[arg-type]
    pools.append(handle)
    return handle


def test_lease_a_connection_counted_by_application_name(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=2)
    with db.lease(timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert server.sessions(app) == 1
    assert wait_until(lambda: db.stats().idle == 1)  # after its reset, off the actor thread
    db.stop(timeout=10)
    assert server.sessions(app) == 0  # stopping the pool closed it


def test_release_rolls_back_what_the_holder_left_open(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=1)
    with db.lease(timeout=10) as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (1)")  # left uncommitted
    with db.lease(timeout=10) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_discard_all_on_release(server: pg.Postgres, app: str, pools: list[PoolHandle]) -> None:
    factory = PostgresFactory(server.dsn, application_name=app, discard_all=True)
    db = pool(pools, factory, max_size=1)
    with db.lease(timeout=10) as conn:
        conn.execute("SET search_path TO pg_catalog")
        conn.commit()
    with db.lease(timeout=10) as conn:
        assert conn.execute("SHOW search_path").fetchone() != ("pg_catalog",)


def test_a_connection_broken_in_a_block_is_destroyed(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=1)
    with pytest.raises(psycopg.OperationalError), db.lease(timeout=10) as conn:
        pid = conn.info.backend_pid
        server.terminate(pid)
        conn.execute("SELECT 1")
    assert wait_until(lambda: db.stats().broken == 1)
    with db.lease(timeout=10) as conn:
        assert conn.info.backend_pid != pid
        assert not conn.broken


def test_an_idle_connection_that_died_is_replaced_on_borrow(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    factory = PostgresFactory(server.dsn, application_name=app, check_idle_after=0)
    db = pool(pools, factory, max_size=1)
    with db.lease(timeout=10) as conn:
        pid = conn.info.backend_pid
    server.terminate(pid)
    with db.lease(timeout=10) as conn:  # the waiter never sees the dead one
        assert conn.info.backend_pid != pid
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert db.stats().check_failures == 1


@pytest.mark.parametrize(
    ("conninfo", "cause"),
    [
        ("host=127.0.0.1 port=1", "Connection refused"),
        ("host=/nonexistent-dir", "No such file or directory"),
        ("not a conninfo", "missing"),
    ],
)
def test_bad_connection_settings_give_a_clear_error(
    pools: list[PoolHandle], conninfo: str, cause: str
) -> None:
    db = pool(pools, PostgresFactory(conninfo, connect_timeout=1), max_size=1, create_backoff=0.05)
    with pytest.raises(AcquireTimeout, match=cause) as info:
        db.acquire(timeout=1.0)
    assert isinstance(info.value.__cause__, psycopg.Error)


def test_a_missing_database_is_named(server: pg.Postgres, pools: list[PoolHandle]) -> None:
    db = pool(pools, PostgresFactory(server.dsn, dbname="no_such_db"), max_size=1)
    with pytest.raises(AcquireTimeout, match='database "no_such_db" does not exist'):
        db.acquire(timeout=1.0)


def test_the_pool_recovers_when_the_server_restarts(pools: list[PoolHandle]) -> None:
    own = pg.start()  # a server of its own: this test crashes it
    if own.server is None:
        pg.stop(own)
        pytest.skip("needs the embedded server (LESSOR_PG_DSN is set)")
    try:
        factory = PostgresFactory(own.dsn, application_name="lessor-restart", check_idle_after=0)
        db = pool(pools, factory, max_size=2, create_backoff=0.05, create_backoff_max=0.2)
        first, second = db.acquire(timeout=10), db.acquire(timeout=10)
        db.release(first)
        db.release(second)
        assert wait_until(lambda: db.stats().idle == 2)
        own.stop_immediately()  # both idle connections are now dead
        answers: list[object] = []

        def query() -> None:  # waits while the server is down; a lease dies with its thread
            with db.lease(timeout=30) as conn:
                answers.append(conn.execute("SELECT 1").fetchone())

        thread = threading.Thread(target=query)
        thread.start()
        assert wait_until(lambda: db.stats().factory_errors >= 1, timeout=10)
        own.start_again()
        thread.join(30)
        assert answers == [(1,)]  # served once the server was back, never a broken one
        stats = db.stats()
        assert stats.check_failures >= 1 and stats.destroyed >= 2  # the dead ones went
    finally:
        pg.stop(own)


def test_a_wrong_password_is_named(pools: list[PoolHandle]) -> None:
    own = pg.start()  # its own server: the test changes pg_hba.conf
    if own.server is None:
        pg.stop(own)
        pytest.skip("needs the embedded server (LESSOR_PG_DSN is set)")
    try:
        with psycopg.connect(own.dsn, autocommit=True) as admin:
            admin.execute("CREATE ROLE lessor_pw LOGIN PASSWORD 'right'")
            hba = Path(own.server.pgdata) / "pg_hba.conf"
            hba.write_text("local all lessor_pw scram-sha-256\n" + hba.read_text())
            admin.execute("SELECT pg_reload_conf()")
        wrong = pool(pools, PostgresFactory(own.dsn, user="lessor_pw", password="wrong"),
                     max_size=1)  # fmt: skip
        with pytest.raises(AcquireTimeout, match="password authentication failed"):
            wrong.acquire(timeout=1.0)
        right = pool(pools, PostgresFactory(own.dsn, user="lessor_pw", password="right"),
                     max_size=1)  # fmt: skip
        with right.lease(timeout=10) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("lessor_pw",)
    finally:
        for handle in pools:
            handle.stop(timeout=10)
        pools.clear()
        pg.stop(own)
