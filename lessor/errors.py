"""One error tree for everything lessor raises.

Callers catch :class:`LessorError` for "lessor said no"; the subclasses keep
"you closed it" (:class:`PoolClosed`, :class:`ShuttingDown`) apart from "the world
broke it" (:class:`AcquireTimeout` with a factory error as its cause), and keep every
kind of bad lease apart so that a bug report names the exact mistake.
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeout",
    "ActorRestarted",
    "ActorStopped",
    "Backpressure",
    "BatchItemFailed",
    "BreakerOpen",
    "DoubleRelease",
    "ExpiredLease",
    "ForeignLease",
    "LeaseError",
    "LessorError",
    "MapTimeout",
    "NoSuchBatcher",
    "NoSuchBreaker",
    "NoSuchPool",
    "NotPortable",
    "PoolClosed",
    "PoolExhausted",
    "ProtocolError",
    "RuntimeStopped",
    "ShuttingDown",
    "StaleLease",
    "SupervisorGaveUp",
    "TaskFailed",
    "UnknownLease",
    "WorkersFailed",
]


class LessorError(Exception):
    """Base class of every error lessor raises on purpose."""


class AcquireTimeout(LessorError):
    """No resource became free before the Acquire's deadline.

    When the pool could not create resources, ``__cause__`` is the last factory error.
    """


class PoolExhausted(LessorError):
    """Refused at once: ``max_waiting`` callers are already queued."""


class PoolClosed(LessorError):
    """The pool was closed (by its owner or because its actor stopped)."""


class ShuttingDown(PoolClosed):
    """The runtime is shutting down: no new Acquires are admitted."""


class NotPortable(LessorError):
    """A worker process asked for a resource that cannot cross processes (a live connection)."""


class NoSuchPool(LessorError):
    """A message named a pool that is not the one it was sent to."""


class NoSuchBatcher(LessorError):
    """No batcher of that name (a worker knows those its runtime had when it was spawned)."""


class Backpressure(LessorError):
    """A batcher's queue stayed full for the whole of a submit's timeout."""


class BatchItemFailed(LessorError):
    """A worker's item failed in the runtime's processor; ``error_type`` names the
    exception the processor gave it (its text is this error's)."""

    def __init__(self, text: str, error_type: str = "") -> None:
        super().__init__(text)
        self.error_type = error_type

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.error_type))


class NoSuchBreaker(LessorError):
    """No breaker of that name (in a worker: none was added before the workers spawned)."""


class BreakerOpen(LessorError):
    """A circuit breaker refused the call: its dependency is failing.

    ``breaker`` names it; ``remaining`` is how many seconds the open state has left
    (None when forced open, or half-open with every probe permit taken).
    """

    def __init__(self, text: str, breaker: str = "", remaining: float | None = None) -> None:
        super().__init__(text)
        self.breaker = breaker
        self.remaining = remaining

    def __reduce__(self) -> tuple[object, ...]:
        return (BreakerOpen, (str(self), self.breaker, self.remaining))


class LeaseError(LessorError):
    """A Release or Renew named a lease that the caller may not use."""


class UnknownLease(LeaseError):
    """The lease id was never granted by this pool."""


class DoubleRelease(LeaseError):
    """The lease was already released."""


class ForeignLease(LeaseError):
    """The lease belongs to another holder."""


class StaleLease(LeaseError):
    """The lease came from an earlier incarnation of the pool (before a restart)."""


class ExpiredLease(LeaseError):
    """The lease was reclaimed (its ttl ran out, or the pool took it back) before this use."""


class ActorStopped(LessorError):
    """The actor a request went to stopped before answering, and will not come back."""


class ActorRestarted(ActorStopped):
    """The actor failed while the request was pending; its supervisor is restarting it.

    The request was not carried out: retrying it reaches the new incarnation.
    """


class SupervisorGaveUp(LessorError):
    """Children failed more often than the restart intensity allows; the tree escalated."""


class RuntimeStopped(LessorError):
    """The runtime was shut down, or its tree stopped or stopped answering: the call
    cannot be carried out. ``__cause__`` is what the runtime ran into, if anything."""


class WorkersFailed(LessorError):
    """A worker group gave up (its workers kept failing, or could not start): it is over.

    ``worker_traceback`` is the last failed worker's traceback (also in the message),
    when it left one; ``exit_code`` its exit status.
    """

    def __init__(
        self, message: str, *, worker_traceback: str = "", exit_code: int | None = None
    ) -> None:
        if worker_traceback:
            message = f"{message}\n\nlast worker traceback:\n{worker_traceback.rstrip()}"
        super().__init__(message)
        self.worker_traceback = worker_traceback
        self.exit_code = exit_code


class TaskFailed(LessorError):
    """An item of ``Runtime.map`` failed in its worker (or its worker died twice on it)."""


class MapTimeout(LessorError, TimeoutError):
    """``Runtime.map`` did not finish within its ``timeout`` (also a TimeoutError)."""


class ProtocolError(LessorError):
    """A frame or message could not be encoded or decoded."""
