"""What the pool core decides; its owner carries each decision out.

Decisions are plain frozen values, so a test can compare them and an owner (the
PoolActor) can act on them in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lessor.errors import LessorError
from lessor.holder import Holder
from lessor.protocol.messages import Lease

__all__ = [
    "AskBack",
    "AskShed",
    "Check",
    "Create",
    "Decision",
    "Destroy",
    "Drained",
    "Expired",
    "Fail",
    "Filled",
    "Grant",
    "Reclaimed",
    "Reset",
]


@dataclass(frozen=True, slots=True)
class Grant:
    """Answer the waiter ``ticket`` with ``lease``."""

    ticket: object
    lease: Lease


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer the waiter ``ticket`` with ``error``."""

    ticket: object
    error: LessorError


@dataclass(frozen=True, slots=True)
class Create:
    """Make one resource; report ``created`` or ``create_failed``."""


@dataclass(frozen=True, slots=True)
class Destroy:
    """Destroy a resource that already left the pool's books."""

    resource: Any
    reason: str


@dataclass(frozen=True, slots=True)
class Check:
    """Run the factory's check on a resource about to be borrowed; report ``checked``."""

    slot: int
    resource: Any


@dataclass(frozen=True, slots=True)
class Reset:
    """Run the factory's reset on a released resource; report ``reset_done``."""

    slot: int
    resource: Any


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """A lease was taken from its holder (expired, holder died, shutdown, ...)."""

    lease: Lease
    why: str


@dataclass(frozen=True, slots=True)
class Expired:
    """A lease ran past its ttl and was reclaimed: tell its holder."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class AskBack:
    """Acquires wait and only a release can serve them: ask these holders to give back.

    Only holders that cache leases they are not using (worker processes) are asked;
    the owner sends each one a ``GiveBack``. Repeated while the pool stays starved.
    """

    holders: tuple[Holder, ...]


@dataclass(frozen=True, slots=True)
class AskShed:
    """A waiter has less than its fair share of a global quota: ``holder``, above its own,
    is to close ``count`` more connections (the owner pushes it a ``Shed``; see
    :mod:`lessor.core.pool.fairshare`)."""

    holder: Holder
    count: int


@dataclass(frozen=True, slots=True)
class Drained:
    """Answer the drain waiter ``ticket``: no lease is out any more (or the pool closed)."""

    ticket: object


@dataclass(frozen=True, slots=True)
class Filled:
    """Answer the readiness waiter ``ticket``: the pool holds ``size`` resources, at least
    its ``min_size`` (see :mod:`lessor.core.pool.readiness`)."""

    ticket: object
    size: int


Decision = (
    Grant | Fail | Create | Destroy | Check | Reset | Expired | Reclaimed | AskBack | Drained
    | Filled | AskShed
)  # fmt: skip
