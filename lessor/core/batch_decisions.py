"""What :class:`~lessor.core.batch.BatchCore` decides with and decides: its settings,
its decisions, its counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lessor.errors import LessorError

__all__ = [
    "Answer",
    "BatchEvent",
    "BatchSettings",
    "BatchTotals",
    "Decision",
    "Finished",
    "FlushDone",
    "FlushReason",
    "ProcessorError",
    "Run",
    "check_outcome",
]

FlushReason = Literal["size", "time", "manual", "shutdown", "retry", "bisect"]


class ProcessorError(LessorError):
    """The processor broke its contract (not a list of one result per item)."""


@dataclass(frozen=True)
class BatchSettings:
    """The numbers the core decides by (a BatchSpec's; see it for their meaning)."""

    max_batch_size: int = 100
    max_wait: float = 0.05
    max_pending: int = 10_000
    max_in_flight: int = 1
    max_attempts: int = 3
    retry_backoff: float = 0.1
    retry_backoff_max: float = 5.0
    bisect: bool = True


@dataclass(frozen=True, slots=True)
class Run:
    """Run the processor on ``items`` (attempt 1 is the first); report with ``done(run)``."""

    run: int
    items: list[Any]
    attempt: int
    reason: FlushReason


@dataclass(frozen=True, slots=True)
class Finished:
    """A run ended: ``result`` "ok", "retry", "bisect" or "failed"; ``error`` is what the
    processor raised (None for "ok"); ``failed`` lists the (item, error) pairs that
    failed for good in it."""

    run: int
    size: int
    result: str
    error: BaseException | None
    failed: list[tuple[Any, BaseException]]


@dataclass(frozen=True, slots=True)
class Answer:
    """Every item of a submission has its outcome: a result or an exception, in order."""

    ticket: Any
    outcomes: list[Any]


@dataclass(frozen=True, slots=True)
class FlushDone:
    """Every item accepted before this flush was asked for has its outcome."""

    ticket: Any


Decision = Run | Finished | Answer | FlushDone


@dataclass
class BatchTotals:
    """Counts since the core was made."""

    accepted: int = 0
    completed: int = 0  # items with an outcome (ok or failed)
    failed: int = 0  # of those, failed
    batches: int = 0  # runs finished
    batched_items: int = 0  # items in those runs
    retries: int = 0
    bisections: int = 0
    backpressure: int = 0  # items refused: no room before their deadline
    results_dropped: int = 0  # outcomes nobody was left to take (the submitter died)
    put_errors: int = 0  # failed items whose submitter asked for no results (put)
    abandoned: int = 0  # items failed at shutdown without a run
    reasons: dict[str, int] = field(default_factory=dict)


def check_outcome(outcome: Any, size: int) -> list[Any] | BaseException:
    """What the processor returned, as per-item outcomes or one batch error."""
    if isinstance(outcome, BaseException):
        return outcome
    if not isinstance(outcome, list) or len(outcome) != size:
        got = f"{len(outcome)} results" if isinstance(outcome, list) else type(outcome).__name__
        return ProcessorError(f"the processor must return a list of {size} results, got {got}")
    return outcome


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """What a batcher's hooks are told of one run of its processor.

    ``result`` is None when the run begins, then "ok", "retry", "bisect" or "failed";
    ``error`` is what the processor raised; ``duration_s`` how long it ran (seconds).
    """

    batcher: str
    run: int
    size: int
    attempt: int
    reason: str
    result: str | None = None
    error: BaseException | None = None
    duration_s: float = 0.0
