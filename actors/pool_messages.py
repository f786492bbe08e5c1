"""The pool actor's own messages: they never leave the process, so they are not lessor Messages.

Results of factory work and timer wake-ups (sent by the pool to itself), and the
requests the runtime's shutdown and a worker's client make of a pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lessor.actors.reply import Reply
from lessor.holder import Holder

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
    "ReclaimAll",
    "ReclaimHolder",
    "ResetDone",
    "Tick",
]


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
