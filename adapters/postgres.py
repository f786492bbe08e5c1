"""PostgreSQL connections for lessor pools (psycopg 3). Install with ``lessor[postgres]``.

``PostgresFactory`` opens connections with a connect timeout and an
``application_name`` (so lessor's sessions can be counted server-side), checks them
cheaply on borrow (the connection's own state; ``SELECT 1`` only after it sat idle
for a while), rolls back whatever a holder left open on release (``DISCARD ALL`` on
request), and never hands out a broken connection: one psycopg reports ``broken``
or ``closed``, or in whose block an ``OperationalError`` was raised, is destroyed.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import pq

from lessor.factory import Factory, IdleClock

__all__ = ["PostgresFactory"]

log = logging.getLogger("lessor.postgres")


class PostgresFactory(Factory[psycopg.Connection[Any]]):
    """Makes psycopg connections from a conninfo string and/or keyword arguments."""

    def __init__(
        self,
        conninfo: str = "",
        *,
        connect_timeout: float = 5.0,
        application_name: str = "lessor",
        check_idle_after: float = 30.0,
        discard_all: bool = False,
        **kwargs: Any,
    ) -> None:
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
        self.conninfo = conninfo
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self.check_idle_after = check_idle_after
        self.discard_all = discard_all
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

    def check(self, resource: psycopg.Connection[Any]) -> bool:
        """Cheap: the connection's state; a round trip only after a long idle spell."""
        if resource.closed or resource.broken:
            return False
        idle = self._clock.idle_for(resource)
        if idle < self.check_idle_after:
            return True
        try:
            resource.execute("SELECT 1")
            resource.rollback()
        except psycopg.Error as exc:
            log.info("postgres: a connection idle for %.0fs failed its check: %s", idle, exc)
            return False
        return True

    def reset(self, resource: psycopg.Connection[Any]) -> None:
        """Roll back what the holder left open; raising makes the pool destroy it."""
        if resource.closed or resource.broken:
            raise psycopg.OperationalError("connection is broken or closed")
        if resource.info.transaction_status != pq.TransactionStatus.IDLE:
            resource.rollback()
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

    def __repr__(self) -> str:  # never show a password
        return f"PostgresFactory(application_name={self.application_name!r})"
