"""A PostgreSQL ``lease()`` block ends as psycopg_pool's ``connection()`` block does.

Leaving it cleanly commits; an error rolls back; the same script gives the same
rows through psycopg_pool and through every lessor handle (in-process, cached, and
a worker's process-scoped pool). Real server, real worker processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg import pq, sql

from lessor import PoolHandle, PoolSpec, Runtime, start_pool
from lessor.adapters.postgres import PostgresFactory
from tests.support import pg
from tests.workers import pg_targets

_tables = itertools.count(1)


@pytest.fixture
def table(server: pg.Postgres) -> Iterator[str]:
    """A fresh table (x int, unique, checked at commit) that other connections can see."""
    name = f"commit_test_{next(_tables)}"
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE TABLE {} (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)").format(
                sql.Identifier(name)
            )
        )
    yield name
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


def rows(server: pg.Postgres, table: str) -> int:
    """Rows committed, as another session sees them."""
    with psycopg.connect(server.dsn, autocommit=True) as other:
        found = other.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()
    assert found is not None
    return int(found[0])


def insert(table: str) -> sql.Composed:
    return sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(table))


Block = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


@pytest.fixture(params=["psycopg_pool", "in-process", "in-process cached"])
def block(request: pytest.FixtureRequest, server: pg.Postgres) -> Iterator[Block]:
    """One connection's ``with ... as conn:`` block, from the anchor or from lessor."""
    if request.param == "psycopg_pool":
        anchor = psycopg_pool.ConnectionPool(server.dsn, min_size=1, max_size=1, open=False)
        anchor.open(wait=True, timeout=30)
        try:
            yield lambda: anchor.connection(timeout=10)
        finally:
            anchor.close()
        return
    spec = PoolSpec("pg", PostgresFactory(server.dsn), min_size=1, max_size=1)
    db: PoolHandle = start_pool(spec, cache=request.param == "in-process cached")
    try:
        yield lambda: db.lease(timeout=10)
    finally:
        db.stop(timeout=10)


def test_a_clean_block_commits(server: pg.Postgres, table: str, block: Block) -> None:
    for i in range(10):
        with block() as conn:
            conn.execute(insert(table), (i,))  # no commit()
    assert rows(server, table) == 10


def test_an_error_in_the_block_rolls_back(server: pg.Postgres, table: str, block: Block) -> None:
    with pytest.raises(ZeroDivisionError), block() as conn:
        conn.execute(insert(table), (1,))
        1 / 0  # noqa: B018
    assert rows(server, table) == 0
    with block() as again:  # the connection was fine: reused, and IDLE
        assert again.info.transaction_status == pq.TransactionStatus.IDLE
        again.execute(insert(table), (2,))
    assert rows(server, table) == 1


def test_a_commit_that_fails_raises_from_the_block(
    server: pg.Postgres, table: str, block: Block
) -> None:
    """A deferred constraint is checked at COMMIT: the block raises, nothing is kept."""
    with pytest.raises(psycopg.errors.UniqueViolation), block() as conn:
        conn.execute(insert(table), (1,))
        conn.execute(insert(table), (1,))
    assert rows(server, table) == 0
    with block() as again:
        again.execute(insert(table), (3,))
    assert rows(server, table) == 1


def test_what_the_holder_committed_stays_and_the_rest_commits_too(
    server: pg.Postgres, table: str, block: Block
) -> None:
    with block() as conn:
        conn.execute(insert(table), (1,))
        conn.commit()
        conn.execute(insert(table), (2,))
    assert rows(server, table) == 2


def test_commit_on_exit_off_leaves_uncommitted_writes_to_the_reset(
    server: pg.Postgres, table: str
) -> None:
    factory = PostgresFactory(server.dsn, commit_on_exit=False)
    db = start_pool(PoolSpec("pg", factory, min_size=1, max_size=1))
    try:
        with db.lease(timeout=10) as conn:
            conn.execute(insert(table), (1,))
        with db.lease(timeout=10) as conn:
            conn.execute(insert(table), (2,))
            conn.commit()  # only what is committed by hand
    finally:
        db.stop(timeout=10)
    assert rows(server, table) == 1


def test_acquire_and_release_never_commit(server: pg.Postgres, table: str) -> None:
    """Only a block commits: a bare release resets (rolls back), as putconn does."""
    db = start_pool(PoolSpec("pg", PostgresFactory(server.dsn), min_size=1, max_size=1))
    try:
        lease = db.acquire(timeout=10)
        lease.resource.execute(insert(table), (1,))
        db.release(lease)
    finally:
        db.stop(timeout=10)
    assert rows(server, table) == 0


def test_a_workers_blocks_commit_on_its_process_scoped_pool(
    server: pg.Postgres, table: str
) -> None:
    with Runtime(handle_signals=False) as rt:
        rt.add_pool(
            PoolSpec("pg", PostgresFactory(server.dsn), max_size=1, scope="process", max_total=2)
        )
        jobs = [["pg", table, 0, 5], ["pg", table, 5, 5]]
        assert rt.map(pg_targets.insert_in_blocks, jobs, workers=2) == [5, 5]
    assert rows(server, table) == 10
