"""One error tree for everything lessor raises.

Callers catch :class:`LessorError` for "lessor said no"; the subclasses keep
"you closed it" (:class:`PoolClosed`, :class:`ShuttingDown`) apart from "the world
broke it" (:class:`AcquireTimeout` with a factory error as its cause), and keep every
kind of bad lease apart so that a bug report names the exact mistake.
"""

from __future__ import annotations

from typing import Any

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
    "MapInterrupted",
    "MapTimeout",
    "NoSuchBatcher",
    "NoSuchBreaker",
    "NoSuchPool",
    "NotPortable",
    "PoolClosed",
    "PoolExhausted",
    "ProtocolError",
    "RemoteTraceback",
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
    """Refused at once, never queued: ``max_waiting`` callers are already queued, or a
    try (``timeout=0``) found nothing free and no room to make one, or the holder is
    paused by the memory manager and tried. The text says which."""


class PoolClosed(LessorError):
    """The pool was closed (by its owner or because its actor stopped)."""


class ShuttingDown(PoolClosed):
    """The runtime is shutting down: no new Acquires are admitted."""


class NotPortable(LessorError):
    """A worker process asked for a resource that cannot cross processes (a live connection)."""


class NoSuchPool(LessorError):
    """No pool of that name: ``runtime.pool(name)``, and in a worker ``client.pool(name)``
    at once (it asks the runtime, so a pool added after the worker spawned is found);
    also a message sent to a pool that names another one."""


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


class RemoteTraceback(Exception):
    """A worker's traceback, as the ``__cause__`` of a TaskFailed (as concurrent.futures
    chains its ``_RemoteTraceback``): an uncaught TaskFailed prints where the worker failed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


class TaskFailed(LessorError):
    """An item of ``Runtime.map``/``imap``/``imap_unordered`` failed.

    ``index`` is the item's position. When its function raised in the worker,
    ``error_type`` is that exception's qualified type name (``ValueError``,
    ``app.jobs.BadRow``), ``message`` its text and ``traceback`` the worker's formatted
    traceback (cut in the middle when long), also chained as a :class:`RemoteTraceback`
    ``__cause__``. When the item failed around its function instead (its worker died
    twice on it, or no worker was left to run it) ``error_type`` and ``traceback`` are
    empty and the text says which.
    """

    def __init__(
        self,
        text: str,
        error_type: str = "",
        message: str = "",
        traceback: str = "",
        index: int | None = None,
    ) -> None:
        super().__init__(text)
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        self.index = index
        if traceback:
            self.__cause__ = RemoteTraceback(traceback)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.error_type, self.message, self.traceback,
                             self.index))  # fmt: skip


class MapInterrupted(KeyboardInterrupt):
    """Ctrl-C (KeyboardInterrupt) while ``Runtime.map`` waited; what was done is kept.

    ``results`` maps the index of every item that finished to its result, ``failed``
    every item that failed to its TaskFailed; items in neither were not done. ``total``
    is the number of items. A KeyboardInterrupt, so an uncaught one still ends the
    program as Ctrl-C does and ``except Exception`` does not swallow it.
    """

    def __init__(
        self,
        text: str,
        results: dict[int, Any] | None = None,
        failed: dict[int, TaskFailed] | None = None,
        total: int = 0,
    ) -> None:
        super().__init__(text)
        self.results: dict[int, Any] = dict(results or {})
        self.failed: dict[int, TaskFailed] = dict(failed or {})
        self.total = total

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.results, self.failed, self.total))


class MapTimeout(LessorError, TimeoutError):
    """``Runtime.map`` (or an ``imap``) did not finish within its ``timeout`` (also a
    TimeoutError); its workers were stopped."""


class ProtocolError(LessorError):
    """A frame or message could not be encoded or decoded."""
