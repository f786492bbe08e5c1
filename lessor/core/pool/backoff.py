"""Backing off a failing factory: exponential, jittered, one probe at a time.

While the factory fails, the pool asks for at most one resource at a time and
not before ``retry_at``; the delay doubles per failure up to a cap, and is
jittered down to half of it so pools that failed together do not retry together.
One success ends it. Waiters stay queued meanwhile, until their own deadline.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Failures of one pool's factory since its last success."""

    __slots__ = ("_base", "_cap", "_rng", "alarm", "failures", "last_error", "retry_at")

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        self._base = base
        self._cap = cap
        self._rng = rng
        self.failures = 0
        self.retry_at = 0.0
        self.alarm = float("inf")  # the earliest ``retry_at`` set since the owner last looked
        #: Named in acquire timeouts: "password authentication failed" beats a bare timeout.
        self.last_error: BaseException | None = None

    def succeeded(self) -> None:
        self.failures = 0
        self.last_error = None

    def failed(self, now: float, error: BaseException) -> None:
        self.failures += 1
        self.last_error = error
        delay = min(self._cap, self._base * 2 ** (self.failures - 1))
        self.retry_at = now + delay * (0.5 + 0.5 * self._rng.random())
        self.alarm = min(self.alarm, self.retry_at)

    def allowed(self, now: float, creating: int, wanted: int) -> int:
        """How many of ``wanted`` creations may start now."""
        if not self.failures:
            return wanted
        if creating:
            return 0
        if now < self.retry_at:
            self.alarm = min(self.alarm, self.retry_at)  # a probe is wanted: wake for it
            return 0
        return min(wanted, 1)

    def next_probe(self, creating: int) -> float | None:
        """When a probe is due, if the factory is failing and no probe is under way."""
        if self.failures and not creating:
            return self.retry_at
        return None
