"""A PoolCore driven by hand, for the core's own tests: its owner's side made trivial."""

from __future__ import annotations

import itertools
import random
from typing import Any

from lessor.core.pool import Create, Decision, Grant, PoolCore
from lessor.factory import TokenFactory
from lessor.holder import Holder
from lessor.protocol.messages import Lease
from lessor.specs import PoolSpec

__all__ = ["Pool", "of"]


class Pool:
    """A PoolCore and its owner's side: every Create comes back as r0, r1, ..."""

    def __init__(self, name: str = "p", orphans: tuple[Lease, ...] = (), **kw: Any) -> None:
        core_args = ("has_check", "has_reset", "reusable", "fair_share")
        core_kw = {k: kw.pop(k) for k in core_args if k in kw}
        spec = PoolSpec(name, TokenFactory(), **{"max_idle": None, "max_lifetime": None, **kw})
        self.core = PoolCore(
            spec, epoch="e2", rng=random.Random(7), past_epochs=frozenset({"e1"}),
            orphans=orphans, **core_kw,
        )  # fmt: skip
        self._names = (f"r{i}" for i in itertools.count())
        self.run(self.core.start(0.0), 0.0)

    def run(self, out: list[Decision], now: float) -> list[Decision]:
        """Carry out creations at once; return every decision seen."""
        seen = list(out)
        pending = sum(isinstance(d, Create) for d in out)
        while pending:
            pending -= 1
            more = self.core.created(now, next(self._names))
            seen += more
            pending += sum(isinstance(d, Create) for d in more)
        return seen

    def lease(self, now: float, ticket: object, holder: Holder, **kw: Any) -> Lease:
        out = self.run(self.core.acquire(now, ticket, holder, **kw), now)
        (lease,) = [d.lease for d in out if isinstance(d, Grant) and d.ticket == ticket]
        return lease


def of(out: list[Decision], kind: type) -> list[Any]:
    return [d for d in out if isinstance(d, kind)]
