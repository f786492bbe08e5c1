"""Every message lessor actors exchange, and the one codec that puts them on a wire.

Messages are frozen, slotted dataclasses with plain fields (str, int, float, bool,
bytes, None, lists and dicts of these), so each one is msgpack-safe by construction.
Who sent a message and where its reply goes live in the envelope, never in the
message: the same ``Acquire`` travels through a pykka inbox in-process and as a
msgpack frame between processes.

Every field is checked where a message is made (TypeError for a wrong type,
ValueError for a wrong value, naming the field), and the decoder calls the same
constructor: what a frame may carry is exactly what could be made in-process.

On the wire a message is the msgpack array ``[tag, field1, field2, ...]``. Tags are
stable integers: never renumber one, only add new ones. The machinery is in
:mod:`lessor.protocol.codec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lessor.protocol import codec
from lessor.protocol.codec import (
    _FIELDS,
    Message,
    decode,
    encode,
    from_parts,
    message,
    pack,
    seal,
    to_parts,
    unpack,
)

__all__ = [
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "Acquire",
    "BreakerState",
    "BreakerStats",
    "Describe",
    "Drain",
    "ErrorReply",
    "ForceBreaker",
    "GetStats",
    "GiveBack",
    "Hello",
    "Lease",
    "LeaseExpired",
    "Message",
    "NextTask",
    "Outcomes",
    "PoolInfo",
    "PoolStats",
    "Probe",
    "ProbePermit",
    "ProbeResult",
    "Release",
    "Renew",
    "Task",
    "TaskResult",
    "WatchBreaker",
    "decode",
    "encode",
    "from_parts",
    "pack",
    "to_parts",
    "unpack",
]

_REGISTRY, _compile = codec._REGISTRY, codec._compile  # the tests check the codec by them

#: Acquire.priority is a signed 64-bit int.
PRIORITY_MIN, PRIORITY_MAX = -(2**63), 2**63 - 1


@message(1)
@dataclass(frozen=True, slots=True)
class Acquire(Message):
    """Ask a pool for a lease. ``timeout=None`` uses the pool's ``acquire_timeout``.

    Higher ``priority`` is served first; ``ttl`` overrides the pool's ``lease_ttl``.
    """

    pool: str
    timeout: float | None = None
    priority: int = 0
    ttl: float | None = None

    def __post_init__(self) -> None:
        _seconds(self, "timeout", self.timeout)
        _seconds(self, "ttl", self.ttl)
        if not PRIORITY_MIN <= self.priority <= PRIORITY_MAX:
            raise ValueError(f"Acquire.priority must be a 64-bit int, got {self.priority!r}")


@message(2)
@dataclass(frozen=True, slots=True)
class Release(Message):
    """Give a lease back; ``broken=True`` makes the pool destroy the resource."""

    lease_id: str
    broken: bool = False


@message(3)
@dataclass(frozen=True, slots=True)
class Renew(Message):
    """Push a lease's expiry to ``ttl`` seconds from now; answered with the new Lease."""

    lease_id: str
    ttl: float

    def __post_init__(self) -> None:
        _seconds(self, "ttl", self.ttl)


@message(4)
@dataclass(frozen=True, slots=True)
class Lease(Message):
    """A grant. Times are ``time.monotonic()`` seconds; ``expires_at=None`` never expires.

    In-process ``resource`` may be any object; only msgpack-safe resources can be encoded.
    ``contended`` says others were still waiting for this pool when it was granted: a
    worker that caches leases gives such a lease back on release instead of parking it.
    """

    id: str
    pool: str
    resource: Any
    holder: str
    granted_at: float
    expires_at: float | None
    contended: bool = False


@message(5)
@dataclass(frozen=True, slots=True)
class GetStats(Message):
    """Ask an actor for a statistics snapshot."""


@message(6)
@dataclass(frozen=True, slots=True)
class PoolStats(Message):
    """A frozen snapshot of one pool. Gauges and counters are counts; times carry ``_ms``."""

    pool: str
    size: int
    idle: int
    leased: int
    checking: int
    creating: int
    waiting: int
    acquired: int
    released: int
    timeouts: int
    created: int
    destroyed: int
    broken: int
    factory_errors: int
    check_failures: int
    expired: int
    reclaimed: int
    rejected: int
    wait_ms_p50: float
    wait_ms_p95: float
    wait_ms_p99: float
    hold_ms_p50: float
    hold_ms_p95: float
    hold_ms_p99: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS[PoolStats]}


@message(7)
@dataclass(frozen=True, slots=True)
class LeaseExpired(Message):
    """Pushed to a holder whose lease ran past ``expires_at`` and was reclaimed."""

    lease_id: str
    pool: str


@message(8)
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First frame on a worker connection, and the node's answer to it."""

    version: int
    worker_id: str
    pid: int


@message(9)
@dataclass(frozen=True, slots=True)
class Drain(Message):
    """Pushed to workers at shutdown: finish current work, release, exit within ``deadline_s``."""

    deadline_s: float


@message(10)
@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """A request failed: ``error`` names the lessor error class, ``text`` says why."""

    error: str
    text: str


@message(11)
@dataclass(frozen=True, slots=True)
class NextTask(Message):
    """A ``Runtime.map`` worker asks for its next item."""

    job: str


@message(12)
@dataclass(frozen=True, slots=True)
class Task(Message):
    """One item of a ``Runtime.map`` job; ``index == -1`` means there is no more work."""

    index: int
    item: Any


@message(13)
@dataclass(frozen=True, slots=True)
class TaskResult(Message):
    """The outcome of one item: ``value`` if ``ok``, else ``error`` (type and message)."""

    job: str
    index: int
    ok: bool
    value: Any
    error: str


@message(14)
@dataclass(frozen=True, slots=True)
class GiveBack(Message):
    """Pushed by a pool with a waiter and nothing free (its AskBack): give back what you
    hold without using it (parked leases, idle connections and their quota)."""

    pool: str


@message(15)
@dataclass(frozen=True, slots=True)
class Describe(Message):
    """Ask a pool for its settings (a worker resolves ``timeout=None`` with them)."""

    pool: str


@message(16)
@dataclass(frozen=True, slots=True)
class PoolInfo(Message):
    """A pool's answer to Describe."""

    pool: str
    acquire_timeout: float
    max_size: int

    def __post_init__(self) -> None:
        _seconds(self, "acquire_timeout", self.acquire_timeout)
        if self.max_size < 1:
            raise ValueError(f"PoolInfo.max_size must be >= 1, got {self.max_size!r}")


_BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")  # core.breaker


@message(17)
@dataclass(frozen=True, slots=True)
class WatchBreaker(Message):
    """Subscribe the sender to a breaker's changes (pushed); answered with its state."""

    breaker: str


@message(18)
@dataclass(frozen=True, slots=True)
class BreakerState(Message):
    """Pushed on every change; ``generation`` grows with each, ``until`` (monotonic s) ends open."""

    breaker: str
    state: str
    generation: int
    until: float | None

    def __post_init__(self) -> None:
        _one_of(self, "state", _BREAKER_STATES)


@message(19)
@dataclass(frozen=True, slots=True)
class Outcomes(Message):
    """A handle's outcomes under ``generation``, a byte per call (bit 0 failed, 1 slow, 2
    ignored), and how many calls it refused."""

    breaker: str
    generation: int
    codes: bytes
    rejected: int = 0

    def __post_init__(self) -> None:
        if self.rejected < 0 or self.codes.translate(None, bytes(range(8))):  # not in 0-7
            raise ValueError("Outcomes: codes are 0-7 and rejected is >= 0")


@message(20)
@dataclass(frozen=True, slots=True)
class Probe(Message):
    """In half-open: ask for a permit to make one probe call (BreakerOpen if none)."""

    breaker: str


@message(21)
@dataclass(frozen=True, slots=True)
class ProbePermit(Message):
    """A probe permit; its call's outcome goes back as ProbeResult."""

    breaker: str
    probe: int
    generation: int


@message(22)
@dataclass(frozen=True, slots=True)
class ProbeResult(Message):
    """How probe ``probe`` went (an outcome code; IGNORED gives the permit back)."""

    breaker: str
    probe: int
    code: int

    def __post_init__(self) -> None:
        _one_of(self, "code", tuple(range(8)))


@message(23)
@dataclass(frozen=True, slots=True)
class ForceBreaker(Message):
    """The operator: ``forced_open``, ``disabled``, or ``closed`` (reset the breaker)."""

    breaker: str
    state: str

    def __post_init__(self) -> None:
        _one_of(self, "state", ("closed", "forced_open", "disabled"))


@message(24)
@dataclass(frozen=True, slots=True)
class BreakerStats(Message):
    """Counts since made; rates (%) over the window, -1 below ``minimum_calls``."""

    breaker: str
    state: str
    generation: int
    time_in_state_s: float
    calls: int
    failures: int
    slow_calls: int
    rejected: int
    ignored: int
    trips: int
    probes: int
    probes_out: int
    window_calls: int
    failure_rate: float
    slow_call_rate: float
    subscribers: int

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS[BreakerStats]}


def _one_of(msg: Message, name: str, allowed: tuple[Any, ...]) -> None:
    if (value := getattr(msg, name)) not in allowed:
        raise ValueError(f"{type(msg).__name__}.{name} must be one of {allowed}, got {value!r}")


def _seconds(msg: Message, name: str, value: float | None) -> None:
    """A duration: a finite number of seconds > 0 (None: the pool's default)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{type(msg).__name__}.{name} must be a finite number > 0 or None, got {value!r}"
        )


seal()
