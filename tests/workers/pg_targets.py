"""Worker targets for the PostgreSQL tests: module-level, so spawn can import them."""

from __future__ import annotations

from typing import Any

from psycopg import sql

import lessor


def insert_in_blocks(job: list[Any]) -> int:
    """In a worker: lease blocks on ``pool`` INSERTing ``first``..``first + n - 1``, one row
    each, none committing by hand."""
    pool, table, first, n = job
    db = lessor.connect().pool(pool)
    statement = sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(table))
    for i in range(first, first + n):
        with db.lease(timeout=30) as conn:
            conn.execute(statement, (i,))
    return int(n)
