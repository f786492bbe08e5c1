"""A pool's readiness (tags 32-33); import them from here or :mod:`lessor.protocol.messages`.

``PoolHandle.wait()`` asks ``Wait``; the pool's core answers ``Ready`` once the pool
holds ``min_size`` resources, so a dead database is reported at start, not at the
first Acquire (psycopg_pool's ``ConnectionPool.wait()``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lessor.protocol.codec import Message, message, seconds

__all__ = ["Ready", "Wait"]


@message(32)
@dataclass(frozen=True, slots=True)
class Wait(Message):
    """Answered with ``Ready`` once pool ``pool`` holds ``min_size`` resources (idle or
    leased), at once if it does already; else AcquireTimeout after ``timeout`` seconds
    (default 30.0), whose ``__cause__`` is the factory's last error (in-process).

    The pool keeps making resources meanwhile, backing off a failing factory as
    usual; the timeout ends the wait, not the pool.
    """

    pool: str
    timeout: float = 30.0

    def __post_init__(self) -> None:
        seconds(self, "timeout", self.timeout)


@message(33)
@dataclass(frozen=True, slots=True)
class Ready(Message):
    """A pool's answer to ``Wait``: it holds ``size`` resources, at least its ``min_size``."""

    pool: str
    size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"Ready.size must be >= 0, got {self.size!r}")
