"""Readiness: callers waiting for the pool to hold ``min_size`` resources (``wait()``).

psycopg_pool's ``ConnectionPool.wait()``, decided in the core: a pool whose factory
cannot make anything (a dead DSN) is reported when it starts, not at the first
Acquire. A waiter asks for nothing: the pool makes ``min_size`` resources anyway and
keeps retrying a failing factory (with its backoff). The first call that finds the
pool holding ``min_size`` resources (idle, checking or leased) answers every waiter
with ``Filled``; one still waiting at its deadline fails with ``AcquireTimeout``
whose ``__cause__`` is the factory's last error. The deadline ends the wait, never
the pool.
"""

from __future__ import annotations

from collections.abc import Callable

from lessor.core.decisions import Decision, Fail, Filled
from lessor.errors import AcquireTimeout, LessorError

__all__ = ["Readiness", "not_ready"]

_INF = float("inf")


class Readiness:
    """Readiness waiters by ticket, with their deadlines (few: no heap needed)."""

    __slots__ = ("alarm", "waiters")

    def __init__(self) -> None:
        #: ticket -> (deadline, timeout); read-only outside (its truth is the hot check).
        self.waiters: dict[object, tuple[float, float]] = {}
        #: The earliest deadline added since the owner last looked (PoolCore.take_alarm).
        self.alarm = _INF

    def add(self, now: float, ticket: object, timeout: float) -> None:
        if ticket in self.waiters:
            raise ValueError(f"ticket {ticket!r} is already waiting")
        deadline = now + timeout
        self.waiters[ticket] = (deadline, timeout)
        self.alarm = min(self.alarm, deadline)

    def fill(self, size: int, out: list[Decision]) -> None:
        """The pool holds ``size`` resources, at least its ``min_size``: answer everyone."""
        out += [Filled(ticket, size) for ticket in self.waiters]
        self.waiters.clear()

    def expire(
        self, now: float, error: Callable[[float], LessorError], out: list[Decision]
    ) -> None:
        """Fail the waiters whose deadline is ``now`` or earlier with ``error(timeout)``."""
        due = [(t, timeout) for t, (deadline, timeout) in self.waiters.items() if deadline <= now]
        for ticket, timeout in due:
            del self.waiters[ticket]
            out.append(Fail(ticket, error(timeout)))

    def next_deadline(self) -> float | None:
        return min((deadline for deadline, _ in self.waiters.values()), default=None)

    def fail_all(self, error: LessorError) -> list[Decision]:
        """Answer every waiter with ``error`` (the pool closes, drains, or its breaker opened)."""
        out: list[Decision] = [Fail(ticket, error) for ticket in self.waiters]
        self.waiters.clear()
        return out


def not_ready(
    name: str, size: int, min_size: int, timeout: float, cause: BaseException | None
) -> AcquireTimeout:
    """The error of a wait that timed out, naming the factory's last error (its cause)."""
    text = f"pool {name!r} holds {size} of its min_size {min_size} resources after {timeout:g}s"
    if cause is not None:  # why it could not make them: "connection refused" beats a bare timeout
        text += f"; the factory is failing: {type(cause).__name__}: {cause}".rstrip()
    err = AcquireTimeout(text)
    err.__cause__ = cause
    return err
