"""A real PostgreSQL for the tests: LESSOR_PG_DSN if set, else pgserver in a temp dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from lessor.demo.postgres import crash


@dataclass
class Postgres:
    dsn: str
    server: Any = None  # a pgserver server when we started one
    directory: str = ""  # its data directory, removed by stop()

    def sessions(self, application_name: str) -> int:
        """Server-side sessions with this application_name (the independent count)."""
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def terminate(self, pid: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: a crash, from the clients' point of view."""
        crash(self.server)

    def start_again(self) -> None:
        self.server.ensure_postgres_running()


def start() -> Postgres:
    dsn = os.environ.get("LESSOR_PG_DSN")
    if dsn:
        return Postgres(dsn)
    import pgserver

    if "XDG_RUNTIME_DIR" not in os.environ:  # where pgserver locks: private, or it warns
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="lessor-xdg-")
    directory = tempfile.mkdtemp(prefix="lessor-pg-")
    server = pgserver.get_server(directory, cleanup_mode="stop")
    return Postgres(server.get_uri(), server, directory)


def stop(pg: Postgres) -> None:
    if pg.server is not None:
        pg.server.cleanup()
    if pg.directory:  # cleanup_mode="stop" leaves the data behind: ~40 MB a run
        shutil.rmtree(pg.directory, ignore_errors=True)


@contextlib.contextmanager
def sent(conn: psycopg.Connection[Any]) -> Iterator[list[str]]:
    """What libpq sends to the server on ``conn`` during the block, from its protocol trace.

    One message per line, e.g. ``Query "ROLLBACK"``; a round trip ends with a ``Query``
    or a ``Sync`` (see :func:`round_trips`). Whichever thread talks on ``conn`` (a pool's
    reset may run on another thread).
    """
    messages: list[str] = []
    with tempfile.TemporaryFile("w+") as trace:
        # libpq's untrace flushes its stream but never closes it: the file's own close
        # does (libpq's FILE, flushed and forgotten, is the only thing left behind)
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield messages
        finally:
            conn.pgconn.untrace()
            trace.seek(0)
            for line in trace:
                direction, _, *message = line.rstrip("\n").split("\t")
                if direction == "F":
                    messages.append(" ".join(part.strip() for part in message))


def round_trips(messages: list[str]) -> int:
    """How many times the client waited for the server (a simple Query, or a Sync)."""
    return sum(1 for m in messages if m.startswith(("Query", "Sync")))
