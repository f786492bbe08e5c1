"""A batch processor's spec: how items are grouped, retried and limited."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lessor.core.batch_decisions import BatchEvent, BatchSettings
from lessor.specs.checks import count, nonempty, number, positive, require

__all__ = ["BatchLimits", "BatchSpec", "Processor"]

#: ``process(items) -> [result or Exception, ...]``: one entry per item, in order.
Processor = Callable[[list[Any]], list[Any]]


@dataclass(frozen=True)
class BatchLimits:
    """What a handle needs to know of its batcher (all that workers are sent)."""

    name: str
    max_pending: int
    submit_timeout: float
    send_interval: float
    frame_items: int


@dataclass(frozen=True)
class BatchSpec:
    """A batcher: items from every process, handed to ``processor`` in batches.

    ``processor(items)`` runs on the runtime's threads, at most ``max_in_flight`` at
    once, and returns one result per item, in order; an exception *in* that list
    fails its item alone, an exception *raised* fails the whole batch (see
    ``max_attempts`` and ``bisect``). Delivery is at least once: a batch may run
    again after a crash, so make the sink idempotent (docs/batching.md).

    Hooks run on the thread that carried out the batcher's decision, never while it
    decides; keep them short. An exception from a hook is logged and ignored.
    """

    name: str
    processor: Processor = field(repr=False)
    #: A batch is run as soon as it holds this many items.
    max_batch_size: int = 100
    #: A partial batch is run once its oldest item has waited this long (seconds).
    max_wait: float = 0.05
    #: Accepted items waiting for a batch, at most; past it a submit waits for room
    #: (items).
    max_pending: int = 10_000
    #: Batches the processor runs at once (1 keeps acceptance order; see the docs).
    max_in_flight: int = 1
    #: How long a submit waits for room before it fails with Backpressure (seconds).
    submit_timeout: float = 30.0
    #: Runs of a batch whose processor raised, before it is split or fails (runs).
    max_attempts: int = 3
    #: Delay before the first retry of a batch, doubling with each (seconds).
    retry_backoff: float = 0.1
    #: Longest delay between retries (seconds).
    retry_backoff_max: float = 5.0
    #: A batch that failed every attempt is split in halves, again and again, so
    #: that only its poison items fail.
    bisect: bool = True
    #: A worker's handle sends its items at least this often while it has some
    #: (seconds); a frame goes at once when it holds ``frame_items`` items.
    send_interval: float = 0.002
    #: Items per frame from a worker, at most (a frame is also cut at 512 KiB).
    frame_items: int = 512
    #: ``on_batch_start(event)``: a run begins (on the processor's thread).
    on_batch_start: Callable[[BatchEvent], None] | None = field(default=None, repr=False)
    #: ``on_batch_complete(event)``: a run ended (ok, retry, bisect or failed).
    on_batch_complete: Callable[[BatchEvent], None] | None = field(default=None, repr=False)
    #: ``on_item_error(item, error)``: an item failed for good.
    on_item_error: Callable[[Any, BaseException], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        nonempty("name", self.name)
        require(callable(self.processor), "processor", "must be callable", self.processor)
        for name in ("max_batch_size", "max_pending", "max_in_flight", "max_attempts",
                     "frame_items"):  # fmt: skip
            count(name, getattr(self, name))
        for name in ("max_wait", "submit_timeout", "retry_backoff", "retry_backoff_max",
                     "send_interval"):  # fmt: skip
            value = getattr(self, name)
            positive(name, value)
            require(math.isfinite(value), name, "must be finite", value)
        most = self.retry_backoff_max
        require(number(most) and most >= self.retry_backoff, "retry_backoff_max",
                "must be >= retry_backoff", most)  # fmt: skip
        require(isinstance(self.bisect, bool), "bisect", "must be a bool", self.bisect)
        for name in ("on_batch_start", "on_batch_complete", "on_item_error"):
            hook = getattr(self, name)
            require(hook is None or callable(hook), name, "must be callable or None", hook)

    @property
    def settings(self) -> BatchSettings:
        """What the core decides by."""
        return BatchSettings(
            self.max_batch_size, self.max_wait, self.max_pending, self.max_in_flight,
            self.max_attempts, self.retry_backoff, self.retry_backoff_max, self.bisect,
        )  # fmt: skip

    @property
    def limits(self) -> BatchLimits:
        return BatchLimits(self.name, self.max_pending, self.submit_timeout,
                           self.send_interval, self.frame_items)  # fmt: skip
