"""The batch processor's messages (tags 25-28); import them from :mod:`lessor.protocol.messages`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lessor.protocol.codec import _FIELDS, Message, message, seconds

__all__ = ["BatcherStats", "FlushBatcher", "Results", "Submit"]


@message(25)
@dataclass(frozen=True, slots=True)
class Submit(Message):
    """Hand a batcher ``items``; answered with their Results once each has one.

    Items without room in the queue wait up to ``timeout`` seconds (None: the
    batcher's ``submit_timeout``), then fail with Backpressure. ``results=False`` (a
    put) is answered with the errors only.
    """

    batcher: str
    items: list[Any]
    timeout: float | None = None
    results: bool = True

    def __post_init__(self) -> None:
        seconds(self, "timeout", self.timeout)


@message(26)
@dataclass(frozen=True, slots=True)
class Results(Message):
    """The outcomes of a Submit's items, in order: ``values[i]``, unless ``errors`` has
    ``[i, type, text]`` for it (``type`` is ``lessor.<Name>`` for a lessor error)."""

    batcher: str
    values: list[Any]
    errors: list[list[Any]]


@message(27)
@dataclass(frozen=True, slots=True)
class FlushBatcher(Message):
    """Run every item accepted so far now; answered once each has its outcome."""

    batcher: str


@message(28)
@dataclass(frozen=True, slots=True)
class BatcherStats(Message):
    """Counts since made; ``latency_ms_*`` from acceptance to outcome, per item."""

    batcher: str
    accepted: int
    completed: int
    failed: int
    batches: int
    mean_batch_size: float
    retries: int
    bisections: int
    backpressure: int
    results_dropped: int
    put_errors: int
    abandoned: int
    pending: int
    in_flight: int
    waiting: int
    flushed_by_size: int
    flushed_by_time: int
    flushed_by_manual: int
    flushed_by_shutdown: int
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS[BatcherStats]}
