"""Batch processors that write to PostgreSQL: ``InsertSink`` and ``CopySink``.

Each batch goes in one transaction on a connection the sink keeps open between
batches (one per batch running at once, so ``max_in_flight`` of them at most); a
connection an error may have broken is closed, and the next batch opens another.
If the batch fails, nothing of it was written, and the batcher retries it, then
bisects it (see :class:`~lessor.specs.BatchSpec`), so one bad row fails alone.

**Idempotent by key.** Delivery to a processor is at least once (a batch may run
again after a crash), so both sinks skip rows whose ``key`` columns exist already
(``INSERT ... ON CONFLICT (key) DO NOTHING``): a row runs twice, and is stored
once. The table needs a unique index on ``key``. Without ``key``, rows are
appended as they come.

- ``InsertSink``: ``executemany`` of the INSERT, sent in pipeline mode (one round
  trip for the batch).
- ``CopySink``: ``COPY`` into a temporary staging table, then one
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: the fastest way in for large
  batches.

An item is a row: a sequence of values in ``columns`` order, or a mapping by column
name. Each item's result is None.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["CopySink", "InsertSink"]


class _Sink:
    """What both sinks share: the connections, the rows, the transaction."""

    def __init__(
        self,
        conninfo: str,
        table: str,
        columns: Sequence[str],
        *,
        key: Sequence[str] = (),
        connect_timeout: float = 5.0,
        application_name: str = "lessor-sink",
    ) -> None:
        if not columns:
            raise ValueError("columns must name at least one column")
        if not set(key) <= set(columns):
            raise ValueError(f"key {list(key)} must be among the columns {list(columns)}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout!r}")
        self.conninfo = conninfo
        self.table = table
        self.columns = tuple(columns)
        self.key = tuple(key)
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._table = sql.Identifier(*table.split("."))
        self._cols = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)
        self._skip = (
            sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in self.key)
            )
            if self.key
            else sql.SQL("")
        )

    def __call__(self, items: list[Any]) -> list[Any]:
        rows = [self._row(item) for item in items]
        conn = self._take()
        try:
            with conn.transaction():
                self._write(conn, rows)
        except BaseException:
            conn.close()  # it may be broken, or mid-COPY: the next batch opens another
            raise
        with self._lock:
            self._idle.append(conn)
        return [None] * len(items)

    def _write(self, conn: psycopg.Connection[Any], rows: list[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _row(self, item: Any) -> Sequence[Any]:
        if isinstance(item, Mapping):
            return [item[c] for c in self.columns]
        if isinstance(item, (str, bytes)) or not isinstance(item, Sequence):
            raise TypeError(f"a row is a sequence or a mapping, not {type(item).__name__}")
        if len(item) != len(self.columns):
            raise ValueError(f"a row has {len(self.columns)} values, got {len(item)}")
        return item

    def _take(self) -> psycopg.Connection[Any]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn
        return psycopg.connect(
            self.conninfo,
            connect_timeout=max(1, round(self.connect_timeout)),
            application_name=self.application_name,
        )

    def close(self) -> None:
        """Close the connections kept between batches."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class InsertSink(_Sink):
    """``INSERT INTO table (columns) VALUES ... [ON CONFLICT (key) DO NOTHING]`` per
    batch, as one pipelined ``executemany``. ``connect_timeout`` is in seconds
    (default 5.0)."""

    def _write(self, conn: psycopg.Connection[Any], rows: list[Sequence[Any]]) -> None:
        marks = sql.SQL(", ").join(sql.Placeholder() for _ in self.columns)
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({}){}").format(
            self._table, self._cols, marks, self._skip
        )
        with conn.cursor() as cur:
            cur.executemany(query, rows)


class CopySink(_Sink):
    """``COPY`` each batch into a temporary table, then insert it into ``table``
    skipping rows whose ``key`` exists. ``connect_timeout`` is in seconds (default 5.0)."""

    def _write(self, conn: psycopg.Connection[Any], rows: list[Sequence[Any]]) -> None:
        stage = sql.Identifier("lessor_stage")
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS"
            ).format(stage, self._table)
        )
        with conn.cursor() as cur:
            copy = sql.SQL("COPY {} ({}) FROM STDIN").format(stage, self._cols)
            with cur.copy(copy) as out:
                for row in rows:
                    out.write_row(row)
            cur.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}{}").format(
                    self._table, self._cols, self._cols, stage, self._skip
                )
            )
