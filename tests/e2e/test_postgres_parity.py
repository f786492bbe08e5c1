"""One script, two pools: psycopg_pool's ConnectionPool and lessor's PostgreSQL pool
must show the same outcomes against a real PostgreSQL (tests/support/pg.py).

Each script runs against psycopg_pool (the anchor) and against lessor, in-process
and through the in-process cache, and returns what a user would see: rows other
sessions find, which errors a block raised, whether the next borrow works. The
lists must be equal. Covered: commit on a clean exit, rollback on an error, a
connection the server killed (``pg_terminate_backend``) or lost in a server crash,
with and without a check on borrow, and ``wait()`` for a good and a dead server.

Where the two differ on purpose, the test says so: at a ``wait()`` timeout
psycopg_pool raises a bare PoolTimeout and closes the pool; lessor's AcquireTimeout
carries the factory's OperationalError as ``__cause__``, and the pool keeps trying.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg import pq, sql

from lessor import AcquireTimeout, PoolHandle, PoolSpec, start_pool
from lessor.adapters.postgres import PostgresFactory
from tests.support import pg
from tests.support.helpers import wait_until

#: A DSN nobody answers: connections are refused at once.
DEAD = "host=127.0.0.1 port=1"
#: Seconds any borrow below may take (a reconnect included).
BORROW = 2.0

Connection = psycopg.Connection[Any]
Script = Callable[["Pool"], list[Any]]
_names = itertools.count(1)


class Pool:
    """The little a script uses of a pool: a ``with`` block, ``wait()``, closing."""

    def __init__(
        self,
        block: Callable[[], AbstractContextManager[Connection]],
        wait: Callable[[float], None],
        close: Callable[[], None],
    ) -> None:
        self.block, self.wait, self.close = block, wait, close


def anchor(dsn: str, *, check: bool, min_size: int = 1, app: str = "parity-anchor") -> Pool:
    """psycopg_pool, opened without waiting (as lessor's start_pool)."""
    made = psycopg_pool.ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=1,
        open=False,
        kwargs={"connect_timeout": 1, "application_name": app},
        check=psycopg_pool.ConnectionPool.check_connection if check else None,
        reconnect_timeout=60,
    )
    made.open(wait=False)
    return Pool(lambda: made.connection(timeout=BORROW), made.wait, made.close)


def lessor_pool(
    dsn: str, *, check: bool, min_size: int = 1, cache: bool = False, app: str = "parity-lessor"
) -> Pool:
    factory = PostgresFactory(dsn, connect_timeout=1, application_name=app,
                              check_idle_after=0 if check else None)  # fmt: skip
    spec = PoolSpec(f"pg{next(_names)}", factory, min_size=min_size, max_size=1,
                    create_backoff=0.05, create_backoff_max=0.2)  # fmt: skip
    handle: PoolHandle = start_pool(spec, cache=cache)
    return Pool(lambda: handle.lease(timeout=BORROW), handle.wait,
                lambda: handle.stop(timeout=10))  # fmt: skip


SIDES: dict[str, Callable[..., Pool]] = {
    "lessor": lessor_pool,
    "lessor cached": lambda dsn, **kw: lessor_pool(dsn, cache=True, **kw),
}


def run(make: Callable[..., Pool], script: Script, dsn: str, **kw: Any) -> list[Any]:
    pool = make(dsn, **kw)
    try:
        return script(pool)
    finally:
        pool.close()


@pytest.fixture(params=list(SIDES))
def side(request: pytest.FixtureRequest) -> Callable[..., Pool]:
    """lessor's pool, compared with the anchor in each test."""
    return SIDES[request.param]


def same(script: Script, dsn: str, side: Callable[..., Pool], **kw: Any) -> list[Any]:
    """Run ``script`` on the anchor and on lessor; their outcomes must be equal."""
    expected = run(anchor, script, dsn, **kw)
    assert run(side, script, dsn, **kw) == expected
    return expected


def outcome(pool: Pool, use: Callable[[Connection], Any]) -> Any:
    """What one block shows the user: ``use``'s result, or the error's class name (a lost
    connection's is OperationalError, whichever subclass the server's goodbye made)."""
    try:
        with pool.block() as conn:
            return use(conn)
    except psycopg.OperationalError:
        return "OperationalError"
    except Exception as exc:
        return type(exc).__name__


# -- commit and rollback -----------------------------------------------------------


@pytest.fixture
def table(server: pg.Postgres) -> Iterator[str]:
    name = f"parity_{next(_names)}"
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


def rows(dsn: str, table: str) -> int:
    """Rows committed, as another session sees them (and then emptied for the next run)."""
    with psycopg.connect(dsn, autocommit=True) as other:
        found = other.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()
        other.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
    assert found is not None
    return int(found[0])


def test_a_clean_exit_commits(server: pg.Postgres, table: str, side: Callable[..., Pool]) -> None:
    insert = sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(table))

    def script(pool: Pool) -> list[Any]:
        for i in range(3):
            with pool.block() as conn:
                conn.execute(insert, (i,))  # no commit()
        with pool.block() as conn:
            conn.execute(insert, (9,))
            conn.commit()
            conn.execute(insert, (10,))  # after a commit by hand: committed on exit too
        return [rows(server.dsn, table)]

    assert same(script, server.dsn, side, check=False) == [5]


def test_an_error_rolls_back_and_the_connection_is_reused(
    server: pg.Postgres, table: str, side: Callable[..., Pool]
) -> None:
    insert = sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(table))

    def fails(conn: Connection) -> None:
        conn.execute(insert, (1,))
        raise ZeroDivisionError

    def script(pool: Pool) -> list[Any]:
        pid = outcome(pool, lambda conn: conn.info.backend_pid)
        error = outcome(pool, fails)
        status = outcome(pool, lambda conn: pq.TransactionStatus(conn.info.transaction_status))
        reused = outcome(pool, lambda conn: conn.info.backend_pid == pid)
        return [error, rows(server.dsn, table), status.name, reused]

    assert same(script, server.dsn, side, check=False) == ["ZeroDivisionError", 0, "IDLE", True]


# -- connections the server dropped ------------------------------------------------


def alive(server: pg.Postgres, pid: int) -> bool:
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        found = admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
        return found.fetchone() is not None


def killed_script(server: pg.Postgres) -> Script:
    def script(pool: Pool) -> list[Any]:
        pid = outcome(pool, lambda conn: conn.info.backend_pid)
        server.terminate(pid)
        assert wait_until(lambda: not alive(server, pid))
        first = outcome(pool, lambda conn: conn.execute("SELECT 1").fetchone())
        second = outcome(pool, lambda conn: conn.execute("SELECT 1").fetchone())
        fresh = outcome(pool, lambda conn: conn.info.backend_pid != pid)
        return [first, second, fresh]

    return script


def test_a_killed_connection_fails_once_then_is_replaced(
    server: pg.Postgres, side: Callable[..., Pool]
) -> None:
    """No check on borrow (both pools' default): the dead one is handed out, its error
    reaches the block, and the pool replaces it."""
    assert same(killed_script(server), server.dsn, side, check=False) == [
        "OperationalError", (1,), True,
    ]  # fmt: skip


def test_with_a_check_on_borrow_a_killed_connection_is_never_seen(
    server: pg.Postgres, side: Callable[..., Pool]
) -> None:
    """psycopg_pool's ``check=ConnectionPool.check_connection``; lessor's
    ``check_idle_after=0``."""
    assert same(killed_script(server), server.dsn, side, check=True) == [(1,), (1,), True]


def test_after_a_server_crash_both_recover_alike() -> None:
    own = pg.start()  # a server of its own: this test crashes it
    if own.server is None:
        pg.stop(own)
        pytest.skip("needs the embedded server (LESSOR_PG_DSN is set)")
    try:
        pools = {
            (name, check): make(own.dsn, check=check)
            for name, make in {"anchor": anchor, **SIDES}.items()
            for check in (False, True)
        }
        for pool in pools.values():
            assert outcome(pool, lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
        own.stop_immediately()  # every idle connection is dead now
        own.start_again()
        seen = {
            key: [outcome(pool, lambda conn: conn.execute("SELECT 1").fetchone())
                  for _ in range(2)]
            for key, pool in pools.items()
        }  # fmt: skip
        for (name, check), got in seen.items():
            expected = seen["anchor", check]
            assert got == expected, f"{name} (check={check}): {got}, psycopg_pool: {expected}"
        assert seen["anchor", False] == ["OperationalError", (1,)]
        assert seen["anchor", True] == [(1,), (1,)]
    finally:
        for pool in locals().get("pools", {}).values():
            with contextlib.suppress(Exception):
                pool.close()
        pg.stop(own)


# -- wait() ------------------------------------------------------------------------


def test_wait_returns_once_min_size_connections_are_open(
    server: pg.Postgres, side: Callable[..., Pool]
) -> None:
    def script(pool: Pool) -> list[Any]:
        pool.wait(2.0)
        return [server.sessions(app)]

    app = f"parity-wait-{next(_names)}"
    expected = run(anchor, script, server.dsn, check=False, min_size=1, app=app)
    assert wait_until(lambda: server.sessions(app) == 0)  # the anchor's are closed
    assert run(side, script, server.dsn, check=False, min_size=1, app=app) == expected == [1]


def test_wait_with_a_dead_server_raises_at_the_timeout(side: Callable[..., Pool]) -> None:
    def timed(pool: Pool) -> tuple[BaseException, float]:
        began = time.monotonic()
        with pytest.raises(Exception) as info:
            pool.wait(1.0)
        return info.value, time.monotonic() - began

    theirs = anchor(DEAD, check=False)
    try:
        their_error, their_time = timed(theirs)
    finally:
        theirs.close()
    ours = side(DEAD, check=False)
    try:
        our_error, our_time = timed(ours)
    finally:
        ours.close()
    # the same shape: a timeout error of the pool's own, after the timeout, not before
    assert isinstance(their_error, psycopg_pool.PoolTimeout)
    assert isinstance(our_error, AcquireTimeout)
    assert 1.0 <= their_time < 1.0 + BORROW and 1.0 <= our_time < 1.0 + BORROW
    # lessor names why: the factory's OperationalError is the cause (psycopg_pool logs it)
    assert their_error.__cause__ is None
    assert isinstance(our_error.__cause__, psycopg.OperationalError)
    assert "Connection refused" in str(our_error) and "Connection refused" in str(
        our_error.__cause__
    )


def test_after_a_wait_timeout_psycopg_pool_closes_and_lessor_keeps_trying() -> None:
    """The one difference on purpose: a supervised pool is not closed by a caller's wait."""
    theirs = anchor(DEAD, check=False)
    with pytest.raises(psycopg_pool.PoolTimeout):
        theirs.wait(0.3)
    with pytest.raises(psycopg_pool.PoolClosed):
        theirs.block().__enter__()
    theirs.close()
    factory = PostgresFactory(DEAD, connect_timeout=1)
    ours = start_pool(PoolSpec("dead", factory, min_size=1, max_size=1, create_backoff=0.05,
                               create_backoff_max=0.1))  # fmt: skip
    try:
        with pytest.raises(AcquireTimeout):
            ours.wait(0.3)
        errors = ours.stats().factory_errors
        assert wait_until(lambda: ours.stats().factory_errors > errors)  # still trying
        with pytest.raises(AcquireTimeout, match="Connection refused"):
            ours.acquire(timeout=0.3)  # and still serving requests
    finally:
        ours.stop(timeout=10)
