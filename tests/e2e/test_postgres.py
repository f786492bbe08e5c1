"""PostgreSQL through lessor pools, against a real server (no mocks of psycopg)."""

from __future__ import annotations

import contextlib
import itertools
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import pq

from lessor import AcquireTimeout, PoolHandle, PoolSpec, start_pool
from lessor.adapters.postgres import PostgresFactory
from tests.support import pg
from tests.support.helpers import wait_until

_names = itertools.count(1)


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
    assert wait_until(lambda: server.sessions(app) == 0)  # stopping the pool closed it


def settled(db: PoolHandle, released: int) -> bool:
    """The pool has taken back ``released`` leases and finished resetting them."""
    return wait_until(lambda: db.stats().released == released and db.stats().checking == 0)


def test_an_idle_connection_is_given_back_without_a_round_trip(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=1)
    lease = db.acquire(timeout=10)
    conn = lease.resource
    conn.execute("SELECT 1")
    conn.commit()  # IDLE again
    with pg.sent(conn) as messages:
        db.release(lease)
        assert settled(db, released=1)
    assert messages == []  # its reset sent nothing to the server
    with db.lease(timeout=10) as again:
        assert again is conn  # and it was reused
    assert db.stats().destroyed == 0


def test_an_autocommit_connection_is_given_back_without_a_round_trip(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    factory = PostgresFactory(server.dsn, application_name=app, autocommit=True)
    db = pool(pools, factory, max_size=1)
    lease = db.acquire(timeout=10)
    with pg.sent(lease.resource) as messages:
        lease.resource.execute("SELECT 1")
        db.release(lease)
        assert settled(db, released=1)
    assert messages == ['Query "SELECT 1"']  # no BEGIN, no ROLLBACK


def test_release_rolls_back_what_the_holder_left_open(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=1)
    lease = db.acquire(timeout=10)
    conn = lease.resource
    conn.execute("CREATE TEMP TABLE t (x int)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")  # left uncommitted
    assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
    with pg.sent(conn) as messages:
        db.release(lease)
        assert settled(db, released=1)
    assert messages == ['Query "ROLLBACK"']
    with db.lease(timeout=10) as again:
        assert again is conn  # rolled back and reused, not replaced
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_connection_left_in_a_failed_transaction_is_rolled_back_and_reused(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=1)
    with pytest.raises(psycopg.errors.DivisionByZero), db.lease(timeout=10) as conn:
        conn.execute("SELECT 1 / 0")  # not fatal: the connection is fine, its transaction not
    assert settled(db, released=1)
    assert db.stats().destroyed == 0
    lease = db.acquire(timeout=10)
    assert lease.resource is conn
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    with contextlib.suppress(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0")  # the same, with the error handled in the block
    assert conn.info.transaction_status == pq.TransactionStatus.INERROR
    with pg.sent(conn) as messages:
        db.release(lease)
        assert settled(db, released=2)
    assert messages == ['Query "ROLLBACK"']
    with db.lease(timeout=10) as again:
        assert again is conn
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert db.stats().destroyed == 0


def returned_in_a_new_connection(db: PoolHandle, pid: int) -> bool:
    """The pool destroyed the connection it had and hands out another."""
    assert settled(db, released=1)
    assert db.stats().destroyed == 1
    with db.lease(timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        return conn.info.backend_pid != pid


def test_a_connection_returned_mid_copy_is_discarded(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=1)
    with db.lease(timeout=10) as conn:
        pid = conn.info.backend_pid
        block = conn.cursor().copy("COPY (SELECT generate_series(1, 100000)) TO STDOUT")
        copy = block.__enter__()  # never left: kept alive below, so never closed either
        assert copy.read()  # a COPY in progress: the holder walked away mid-stream
        assert conn.info.transaction_status == pq.TransactionStatus.ACTIVE
    assert returned_in_a_new_connection(db, pid)
    del block
    assert wait_until(lambda: server.sessions(app) == 1)  # the discarded one was closed


def test_a_connection_returned_inside_a_transaction_block_is_discarded(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    """psycopg forbids a rollback there, and the holder's block would still end it later."""
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=1)
    lease = db.acquire(timeout=10)
    conn = lease.resource
    pid = conn.info.backend_pid
    block = conn.transaction()
    block.__enter__()
    conn.execute("SELECT 1")
    db.release(lease)
    assert returned_in_a_new_connection(db, pid)
    del block


def test_a_connection_returned_in_pipeline_mode_is_discarded(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=1)
    with db.lease(timeout=10) as conn:
        pid = conn.info.backend_pid
        block = conn.pipeline()
        block.__enter__()
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE  # nothing sent yet
    assert returned_in_a_new_connection(db, pid)
    del block


def test_a_connection_the_holder_closed_is_discarded(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    db = pool(pools, PostgresFactory(server.dsn, application_name=app), max_size=1)
    with db.lease(timeout=10) as conn:
        pid = conn.info.backend_pid
        conn.close()  # UNKNOWN
    assert returned_in_a_new_connection(db, pid)


def test_no_check_on_borrow_unless_asked(
    server: pg.Postgres, app: str, pools: list[PoolHandle]
) -> None:
    plain = PostgresFactory(server.dsn, application_name=app)
    assert not plain.checks_on_borrow()  # so the pool never stops a borrow for one
    checked = PostgresFactory(server.dsn, application_name=app, check_idle_after=60)
    assert checked.checks_on_borrow()
    copy = pickle.loads(pickle.dumps(checked))  # as it travels to a worker process
    assert copy.checks_on_borrow() and copy.check_idle_after == 60
    with pytest.raises(ValueError, match="check_idle_after"):
        PostgresFactory(server.dsn, check_idle_after=-1)


@pytest.mark.parametrize(("idle_after", "expected"), [(0, ['Query ""']), (60, [])])
def test_a_check_is_one_round_trip_and_only_after_an_idle_spell(
    server: pg.Postgres,
    app: str,
    pools: list[PoolHandle],
    idle_after: float,
    expected: list[str],
) -> None:
    factory = PostgresFactory(server.dsn, application_name=app, check_idle_after=idle_after)
    db = pool(pools, factory, max_size=1)
    with db.lease(timeout=10) as conn:
        conn.commit()
    assert settled(db, released=1)
    with pg.sent(conn) as messages:
        lease = db.acquire(timeout=10)
    assert lease.resource is conn
    assert messages == expected  # psycopg_pool's check_connection: an empty query
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    assert not conn.autocommit  # as the holder expects it
    db.release(lease)


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
