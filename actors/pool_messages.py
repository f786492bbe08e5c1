"""The pool actor's own messages: they never leave the process, so they are not lessor Messages.

Results of factory work and timer wake-ups (sent by the pool to itself), the
requests the runtime's shutdown and a worker's client make of a pool, and what one
incarnation of a supervised pool hands the next (:class:`PoolLineage`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lessor.actors.reply import Reply
from lessor.holder import Holder
from lessor.protocol.messages import Lease

__all__ = [
    "AwaitDrained",
    "BeginDrain",
    "BreakerGate",
    "CancelAcquire",
    "Checked",
    "CreateFailed",
    "Created",
    "EvictIdle",
    "HolderGone",
    "PoolLineage",
    "ReclaimAll",
    "ReclaimHolder",
    "ResetDone",
    "Tick",
]


class PoolLineage:
    """What one supervised pool passes from an incarnation to the next.

    The epochs of earlier incarnations (their leases are stale, not unknown) and the
    leases a crashed incarnation left with live holders (orphans: their resources
    are destroyed when the holder lets go, and count against ``max_size`` till then).
    """

    def __init__(self) -> None:
        self.epochs: list[str] = []
        self.orphans: list[Lease] = []
        #: Holders whose admission is paused, with why: a restart does not lift a pause.
        self.paused: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class BreakerGate:
    """The pool's breaker is in ``state`` (open until ``until``): open stops the pool."""

    breaker: str
    state: str
    until: float | None


@dataclass(frozen=True, slots=True)
class Created:
    resource: Any


@dataclass(frozen=True, slots=True)
class CreateFailed:
    error: BaseException


@dataclass(frozen=True, slots=True)
class Checked:
    slot: int
    ok: bool


@dataclass(frozen=True, slots=True)
class ResetDone:
    slot: int
    ok: bool


@dataclass(frozen=True, slots=True)
class HolderGone:
    holder: Holder


@dataclass(frozen=True, slots=True)
class EvictIdle:
    """Close idle resources above min_size now (their quota is wanted elsewhere)."""


@dataclass(frozen=True, slots=True)
class BeginDrain:
    """Shutdown, step 1: refuse new Acquires (ShuttingDown) and fail queued ones."""


@dataclass(frozen=True, slots=True)
class AwaitDrained:
    """Shutdown, step 2: ``reply`` is answered once no lease is out."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class ReclaimAll:
    """Shutdown, step 3 (the deadline passed): take every lease back; answered with them."""

    why: str


@dataclass(frozen=True, slots=True)
class ReclaimHolder:
    """Take back every lease of ``holder`` now; answered with them (a shutdown's own caller)."""

    holder: Holder
    why: str = "reclaimed from the caller of shutdown"


@dataclass(frozen=True, slots=True)
class CancelAcquire:
    """Sent by a caller whose own wait gave up first (poolboy's ``cancel_waiting``).

    If the Acquire was granted in the meantime, the lease is released so it is not lost.
    """

    reply: Reply
    holder: Holder
