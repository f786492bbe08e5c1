"""PostgreSQL connections for lessor pools (psycopg 3). Install with ``lessor[postgres]``.

``PostgresFactory`` opens connections with a connect timeout and an
``application_name`` (so lessor's sessions can be counted server-side) and never
hands out a broken connection: one psycopg reports ``broken`` or ``closed``, or in
whose block an ``OperationalError`` was raised, is destroyed.

A ``lease()`` block behaves like psycopg_pool's ``with pool.connection() as conn:``:
leaving it cleanly commits an open transaction (``commit_on_exit``, default True),
and an error rolls back (the reset below). Without it, writes not committed by hand
are rolled back on release. ``acquire()``/``release()`` never commit: a release
only resets. A transaction left failed, mid-COPY or in pipeline mode is not
committed: the reset rolls it back or discards the connection.

On release it does what psycopg_pool's ``_reset_connection`` does, by the
connection's ``transaction_status`` (no round trip to find out):

- ``IDLE``: nothing, no round trip (the holder committed, or ran in autocommit);
- ``INTRANS`` / ``INERROR``: ``ROLLBACK``; if that fails (say the holder released
  inside ``with conn.transaction()``, where psycopg forbids it), the connection goes;
- ``ACTIVE`` (a query or a ``COPY`` still running) and ``UNKNOWN`` (closed, broken):
  the connection goes, as does one left in pipeline mode.

"Goes" means ``reset`` raises, and the pool destroys the connection and makes
another. With ``discard_all`` a reset connection also gets ``DISCARD ALL``.

On borrow there is no check by default, as with psycopg_pool: a connection that
passed its reset cannot have changed state while idle without I/O, so a check
could only find one the server dropped meanwhile, and that takes a round trip.
``check_idle_after=s`` asks for that round trip (an empty query, as psycopg_pool's
``check_connection``) for a connection idle at least ``s`` seconds (0: on every
borrow); without it ``checks_on_borrow`` is False and the pool skips the step.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import pq

from lessor.adapters.postgres_sink import CopySink, InsertSink
from lessor.factory import Factory, IdleClock

__all__ = ["CopySink", "InsertSink", "PostgresFactory"]

log = logging.getLogger("lessor.postgres")

_ROLLBACK = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


class PostgresFactory(Factory[psycopg.Connection[Any]]):
    """Makes psycopg connections from a conninfo string and/or keyword arguments.

    ``connect_timeout`` is in seconds (default 5.0); ``check_idle_after`` in seconds
    (default None: no borrow check); ``discard_all`` (default False) sends
    ``DISCARD ALL`` after each reset; ``commit_on_exit`` (default True) commits when
    a ``lease()`` block ends without an error. Other keyword arguments go to
    ``psycopg.connect``.
    """

    def __init__(
        self,
        conninfo: str = "",
        *,
        connect_timeout: float = 5.0,
        application_name: str = "lessor",
        check_idle_after: float | None = None,
        discard_all: bool = False,
        commit_on_exit: bool = True,
        **kwargs: Any,
    ) -> None:
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
        if check_idle_after is not None and check_idle_after < 0:
            raise ValueError(f"check_idle_after must be >= 0, got {check_idle_after!r}")
        self.conninfo = conninfo
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self.check_idle_after = check_idle_after
        self.discard_all = discard_all
        self.commit_on_exit = commit_on_exit
        self.kwargs = kwargs
        self._clock = IdleClock()

    def create(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.conninfo,
            connect_timeout=max(1, round(self.connect_timeout)),
            application_name=self.application_name,
            **self.kwargs,
        )
        self._clock.mark(conn)
        return conn

    def destroy(self, resource: psycopg.Connection[Any]) -> None:
        self._clock.forget(resource)
        resource.close()

    def checks_on_borrow(self) -> bool:
        return self.check_idle_after is not None

    def check(self, resource: psycopg.Connection[Any]) -> bool:
        """State first (free); one round trip only after an idle spell."""
        if resource.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return False  # closed or broken (UNKNOWN), or not reset
        idle = self._clock.idle_for(resource)
        if self.check_idle_after is None or idle < self.check_idle_after:
            return True
        autocommit = resource.autocommit
        try:
            resource.autocommit = True  # an empty query, alone: one round trip
            resource.execute("")
            resource.autocommit = autocommit
        except psycopg.Error as exc:
            log.info("postgres: a connection idle for %.0fs failed its check: %s", idle, exc)
            return False
        self._clock.mark(resource)
        return True

    def reset(self, resource: psycopg.Connection[Any]) -> None:
        """Bring the connection back to IDLE, or raise so that the pool destroys it."""
        status = resource.pgconn.transaction_status
        if status in _ROLLBACK:
            resource.rollback()  # raises inside ``with conn.transaction()``: it goes
            status = resource.pgconn.transaction_status
        if status != pq.TransactionStatus.IDLE:
            name = pq.TransactionStatus(status).name
            raise psycopg.InterfaceError(f"connection returned {name}: discarded")
        if resource.pgconn.pipeline_status != pq.PipelineStatus.OFF:
            raise psycopg.InterfaceError("connection returned in pipeline mode: discarded")
        if self.discard_all:
            autocommit = resource.autocommit
            resource.autocommit = True
            try:
                resource.execute("DISCARD ALL")
            finally:
                resource.autocommit = autocommit
        self._clock.mark(resource)

    def is_fatal(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError)

    def finish(self, resource: psycopg.Connection[Any]) -> None:
        """Commit an open transaction, as leaving psycopg_pool's ``connection()`` does.

        Only from INTRANS outside pipeline mode: IDLE has nothing to commit, and a
        connection mid-COPY, failed, closed or in a pipeline is the reset's to judge
        (a commit could block on a COPY's lock, or hide that the block went wrong).
        """
        pgconn = resource.pgconn
        if (
            self.commit_on_exit
            and pgconn.transaction_status == pq.TransactionStatus.INTRANS
            and pgconn.pipeline_status == pq.PipelineStatus.OFF
        ):
            resource.commit()

    def __repr__(self) -> str:  # never show a password
        return f"{type(self).__name__}(application_name={self.application_name!r})"
