"""What a WorkerGroup is started with and the messages it answers; import them from
:mod:`lessor.supervisor.workers`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from lessor.specs import Backoff, Restart
from lessor.specs.checks import nonempty, positive, require

__all__ = ["Hurry", "RecycleWorker", "StopWorkers", "WorkerInfo", "WorkerPids", "WorkerSpec",
           "WorkerStatus"]  # fmt: skip


class Hurry(Protocol):
    """What a group looks at to cut its waits short (a ``threading.Event``, or one that is
    set when any of several is: a map's own Ctrl-C, or the runtime's)."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class WorkerSpec:
    """``n`` processes running ``target(*args)``; ``target`` must be a module-level function.

    Restart options mean what they mean in :class:`~lessor.specs.ChildSpec` and
    :class:`~lessor.specs.SupervisorSpec`, with every worker a child of the group.
    """

    id: str
    target: Callable[..., Any]
    n: int = 1
    args: tuple[Any, ...] = ()
    #: Transient: a worker that returns (status 0) is done, one that fails is restarted
    #: (permanent would run a finished batch job again, for ever).
    restart: Restart = "transient"
    #: More than ``max_restarts`` restarts within ``max_seconds`` (s): WorkersFailed.
    max_restarts: int = 10
    max_seconds: float = 10.0
    #: Delay before each restart (``min``/``max`` in s, ``jitter`` a fraction); None: at
    #: once. Delays grow with the restarts inside the window, so if they add up past
    #: ``max_seconds`` a crash loop is slowed down for good rather than given up on.
    backoff: Backoff | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: Process-scoped pool specs each worker runs its own pool of; breaker specs and
    #: batcher limits, for its handles (``connect().breaker(name)``, ``.batcher(name)``).
    pools: dict[str, Any] = field(default_factory=dict)
    breakers: dict[str, Any] = field(default_factory=dict)
    batchers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        nonempty("id", self.id)
        require(callable(self.target), "target", "must be callable", self.target)
        require(isinstance(self.n, int) and self.n >= 1, "n", "must be an int >= 1", self.n)
        require(self.restart in ("permanent", "transient", "temporary"), "restart",
                "must be permanent, transient or temporary", self.restart)  # fmt: skip
        require(isinstance(self.max_restarts, int) and self.max_restarts >= 0, "max_restarts",
                 "must be an int >= 0", self.max_restarts)  # fmt: skip
        positive("max_seconds", self.max_seconds)
        require(self.backoff is None or isinstance(self.backoff, Backoff), "backoff",
                 "must be a Backoff or None", self.backoff)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerPids:
    """Answered with the pids of the workers running now (not those waiting to restart)."""


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """Answered with one :class:`WorkerInfo` per worker, in slot order."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One slot's current or last worker. ``running``: its exit is not known yet;
    ``restarting``: waiting out its backoff; ``done``: exited for good; ``recycles``:
    times it was replaced by the memory manager (not counted in ``restarts``);
    ``uptime_s``: seconds its process has run (0.0 once it has exited)."""

    id: str
    pid: int | None
    running: bool
    restarts: int
    restarting: bool
    done: bool
    recycles: int = 0
    uptime_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StopWorkers:
    """Drain the workers and wait up to ``timeout`` for them to exit; then, if ``kill``,
    SIGTERM the stragglers and SIGKILL them after TERM_GRACE. No restarts from here on.
    Answered with the worker ids that had to be terminated or killed."""

    timeout: float
    kill: bool = True


@dataclass(frozen=True, slots=True)
class RecycleWorker:
    """Replace a running worker with a fresh process, as Celery's
    ``worker_max_memory_per_child`` does: push it Drain, give it ``grace`` seconds to
    finish and release, then SIGTERM (and SIGKILL after TERM_GRACE). Its exit is not a
    failure: the slot is restarted at once, outside the restart intensity. Answered
    with False if ``worker_id`` is not running here (or already being recycled).
    """

    worker_id: str
    why: str
    grace: float
