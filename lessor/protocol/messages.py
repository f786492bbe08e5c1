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
    seconds,
    to_parts,
    unpack,
)

__all__ = [
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "Acquire",
    "Admission",
    "BatcherStats",
    "BreakerState",
    "BreakerStats",
    "Cleanup",
    "Describe",
    "Drain",
    "ErrorReply",
    "FlushBatcher",
    "ForceBreaker",
    "GetStats",
    "GetStatus",
    "GiveBack",
    "Hello",
    "Lease",
    "LeaseExpired",
    "LocalPoolStats",
    "MemoryStats",
    "Message",
    "NextTask",
    "Outcomes",
    "PoolInfo",
    "PoolStats",
    "Probe",
    "ProbePermit",
    "ProbeResult",
    "Ready",
    "Release",
    "Renew",
    "Results",
    "Shed",
    "Status",
    "Submit",
    "Task",
    "TaskResult",
    "Wait",
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
    """Ask a pool for a lease. ``timeout=None`` uses the pool's ``acquire_timeout``;
    ``timeout=0`` asks for one now (PoolExhausted if none is free, see ``PoolCore.acquire``).

    Higher ``priority`` is served first; ``ttl`` overrides the pool's ``lease_ttl``.
    """

    pool: str
    timeout: float | None = None
    priority: int = 0
    ttl: float | None = None

    def __post_init__(self) -> None:
        timeout = self.timeout  # 0 is a try: now or PoolExhausted, never behind other holders
        if timeout is not None and not 0 <= timeout < float("inf"):
            raise ValueError(f"Acquire.timeout must be a finite number >= 0 or None, got {timeout}")
        seconds(self, "ttl", self.ttl)
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
        seconds(self, "ttl", self.ttl)


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
    """A frozen snapshot of one pool. Gauges and counters are counts; times carry ``_ms``.

    ``holders``: leases out now, by holder id; ``reclaimed_by`` counts leases taken back
    by why; ``*_ms_buckets`` count every
    wait (hold) ever, per bucket of :data:`lessor.core.samples.BOUNDS_MS` (+Inf last),
    and ``*_ms_sum`` is their sum: a histogram, where the percentiles are recent only.
    """

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
    holders: dict[str, int]
    reclaimed_by: dict[str, int]
    wait_ms_buckets: list[int]
    wait_ms_sum: float
    hold_ms_buckets: list[int]
    hold_ms_sum: float

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
    """A ``Runtime.map`` worker asks for its next chunk of items (answered with a Task).

    ``more=False``: it is leaving (drained) and asks for nothing; the answer (no work)
    comes after every result it told before, so none is lost as it exits.
    """

    job: str
    more: bool = True


@message(12)
@dataclass(frozen=True, slots=True)
class Task(Message):
    """Consecutive items of a map job, the first at ``index``: one round trip per chunk.

    ``index == -1`` with no items means there is no more work.
    """

    index: int
    items: list[Any]

    def __post_init__(self) -> None:
        if (self.index < 0 or not self.items) and (self.index, self.items) != (-1, []):
            raise ValueError(
                f"Task: index >= 0 with items, or -1 with none; got {self.index} with "
                f"{len(self.items)} items"
            )


#: Bounds of a TaskResult's error text, in characters: at most 4 bytes each in UTF-8,
#: so a failed item's frame stays far below ``wire.MAX_FRAME`` (1 MiB).
MAX_ERROR_TYPE, MAX_ERROR_TEXT, MAX_TRACEBACK = 512, 16 * 1024, 64 * 1024


@message(13)
@dataclass(frozen=True, slots=True)
class TaskResult(Message):
    """The outcome of one item, told on its own: ``value`` if ``ok``; else the exception's
    qualified type name (``error_type``), its text (``error``) and the worker's formatted
    ``traceback`` (the worker cuts both to MAX_ERROR_TEXT and MAX_TRACEBACK)."""

    job: str
    index: int
    ok: bool
    value: Any
    error: str
    error_type: str = ""
    traceback: str = ""

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"TaskResult.index must be >= 0, got {self.index}")
        if self.ok and (self.error or self.error_type or self.traceback):
            raise ValueError("TaskResult: a result that is ok carries no error")
        if not self.ok and self.value is not None:
            raise ValueError("TaskResult: a failed result carries no value")
        for name, limit in (("error_type", MAX_ERROR_TYPE), ("error", MAX_ERROR_TEXT),
                            ("traceback", MAX_TRACEBACK)):  # fmt: skip
            if len(getattr(self, name)) > limit:
                raise ValueError(f"TaskResult.{name} is over {limit} characters")


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
        seconds(self, "acquire_timeout", self.acquire_timeout)
        if self.max_size < 1:
            raise ValueError(f"PoolInfo.max_size must be >= 1, got {self.max_size!r}")


# The other actors' messages: declared in their own modules, registered in the same
# codec, and imported from here like every other message.
from lessor.protocol.batch_messages import (  # noqa: E402
    BatcherStats,
    FlushBatcher,
    Results,
    Submit,
)
from lessor.protocol.breaker_messages import (  # noqa: E402
    BreakerState,
    BreakerStats,
    ForceBreaker,
    Outcomes,
    Probe,
    ProbePermit,
    ProbeResult,
    WatchBreaker,
)
from lessor.protocol.control_messages import GetStatus, Status  # noqa: E402
from lessor.protocol.memory_messages import Admission, Cleanup, MemoryStats  # noqa: E402
from lessor.protocol.pool_messages import Ready, Wait  # noqa: E402
from lessor.protocol.quota_messages import LocalPoolStats, Shed  # noqa: E402

seal()
