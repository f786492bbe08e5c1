"""SpinBudget: how long a worker thread awaiting a reply polls before it sleeps."""

from __future__ import annotations

__all__ = ["SpinBudget"]


class SpinBudget:
    """How long a thread awaiting a reply polls before it sleeps, adapted as it goes.

    Sleeping in ``poll`` and being woken by the reply costs tens of µs per round trip
    on a VM; polling for the reply instead halves a round trip. Spinning only pays
    while replies come quickly and a core is free, so the budget is three times the
    typical quick reply (a moving average), and spinning stops while most spins miss
    (a pool that makes callers wait, other busy threads, more workers than cores),
    but for one probe every ``PROBE_EVERY`` requests to find out whether it pays again.
    """

    MIN = 10e-6
    MAX = 200e-6
    PROBE_EVERY = 64

    __slots__ = ("_misses", "_typical", "_until_probe", "budget")

    def __init__(self) -> None:
        self.budget = self.MAX
        self._typical = self.MAX / 3
        self._misses = 0.0  # moving share of spins that saw no reply
        self._until_probe = 0

    def observed(self, answered: bool, waited: float) -> None:
        hit = answered and waited <= self.budget
        self._misses += ((not hit) - self._misses) * 0.1
        if hit:
            self._typical += (waited - self._typical) * 0.2
        if self._misses > 0.5:
            self.budget = 0.0
            self._until_probe = self.PROBE_EVERY
        else:
            self.budget = min(self.MAX, max(self.MIN, 3 * self._typical))

    def skipped(self) -> None:
        """A request went by without spinning: after enough of them, probe once."""
        if self._until_probe:
            self._until_probe -= 1
            if not self._until_probe:
                self.budget = self.MAX  # a probe that can see a reply if one comes soon
