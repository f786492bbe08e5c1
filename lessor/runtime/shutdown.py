"""How a Runtime stops: the steps of its drain, the report, and one way to ask the tree.

The drain runs on whichever thread called ``shutdown`` first and holds no lock while
it waits. Every wait is sliced and cut short once ``hurry`` is set (a second signal):
then nothing waits for holders or workers any more, workers are SIGKILLed, leases
reclaimed and the tree stopped at once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from threading import Event
from typing import Any

import pykka
from pykka import ThreadingFuture

from lessor.actors.pool_messages import AwaitDrained, BeginDrain, ReclaimAll, ReclaimHolder
from lessor.errors import ActorStopped, LessorError, RuntimeStopped
from lessor.handles.pool import PoolHandle
from lessor.holder import Holder
from lessor.protocol.messages import Lease
from lessor.supervisor.child import ChildRef
from lessor.supervisor.supervisor import StopChildren
from lessor.supervisor.workers import StopWorkers

__all__ = [
    "HURRIED_STOP",
    "SLICE",
    "ShutdownReport",
    "ask",
    "drain",
    "live",
    "make_report",
    "reclaim_holder",
]

log = logging.getLogger("lessor.runtime")

#: The longest the drain waits without looking whether it was told to hurry.
SLICE = 0.05
#: Once hurried, how long each child of the root gets to stop.
HURRIED_STOP = 0.25


def ask(ref: pykka.ActorRef[Any], message: Any, timeout: float, what: str = "the runtime") -> Any:
    """Ask an actor of the tree; pykka's errors come back as RuntimeStopped (cause chained)."""
    name = type(message).__name__
    try:
        return ref.ask(message, timeout=timeout)
    except pykka.ActorDeadError as exc:
        raise RuntimeStopped(f"{what} is not running ({name} not delivered)") from exc
    except pykka.Timeout as exc:
        raise RuntimeStopped(f"{what} did not answer {name} in {timeout:g}s") from exc
    except ActorStopped as exc:  # answered by its teardown: it stopped before handling it
        raise RuntimeStopped(f"{what} stopped before answering {name}") from exc


@dataclass(frozen=True)
class ShutdownReport:
    """What a shutdown did. ``reclaimed``: leases still out at the deadline;
    ``reclaimed_from_caller``: leases the shutdown's own caller still held, taken back
    at once (it cannot release them while it waits); ``killed``: children and workers
    that did not stop in time; ``unflushed``: items each batcher could not process
    before the deadline (their submitters got RuntimeStopped)."""

    reclaimed: tuple[Lease, ...]
    killed: tuple[str, ...]
    duration_s: float
    failure: str | None = None
    reclaimed_from_caller: tuple[Lease, ...] = ()
    unflushed: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.reclaimed or self.reclaimed_from_caller or self.killed or self.failure
                    or self.unflushed)  # fmt: skip


def live(nodes: Iterable[PoolHandle | ChildRef]) -> list[pykka.ActorRef[Any]]:
    """The running incarnation of each node that has one (no waiting)."""
    refs: list[pykka.ActorRef[Any]] = []
    for node in nodes:
        with contextlib.suppress(LessorError):
            refs.append(
                node.current_ref(0.0) if isinstance(node, PoolHandle) else node.current(0.0)
            )
    return refs


def make_report(
    began: float,
    reclaimed: list[Lease],
    killed: list[str],
    failure: BaseException | None,
    from_caller: list[Lease],
    unflushed: dict[str, int] | None = None,
) -> ShutdownReport:
    report = ShutdownReport(
        tuple(reclaimed),
        tuple(killed),
        round(time.monotonic() - began, 3),
        None if failure is None else f"{type(failure).__name__}: {failure}",
        tuple(from_caller),
        dict(unflushed or {}),
    )
    log.info(
        "shutdown in %.3fs: %d leases reclaimed (%d from the caller), killed %s, unflushed %s",
        report.duration_s,
        len(reclaimed) + len(from_caller),
        len(from_caller),
        list(killed),
        report.unflushed,
    )
    return report


def reclaim_holder(pools: list[pykka.ActorRef[Any]], holder: Holder) -> list[Lease]:
    """Take back every lease ``holder`` has in ``pools``, now."""
    taken: list[Lease] = []
    for pool in pools:
        with contextlib.suppress(LessorError):
            taken += ask(pool, ReclaimHolder(holder), 5, "a pool")
    return taken


def drain(
    root: pykka.ActorRef[Any],
    pools: list[pykka.ActorRef[Any]],
    groups: list[pykka.ActorRef[Any]],
    deadline: float,
    hurry: Event,
    caller: Holder,
    settle: Callable[[], None] | None = None,
) -> tuple[list[Lease], list[Lease], list[str]]:
    """Steps 1-4 of ``Runtime.shutdown``: (reclaimed at the deadline, from the caller, killed).

    ``settle`` runs once the workers are gone (or the deadline passed), before anything
    is reclaimed: the batchers finish what the workers handed in.
    """
    for pool in pools:  # 1. refuse new Acquires; the caller's own leases come back now
        with contextlib.suppress(pykka.ActorDeadError):
            pool.tell(BeginDrain())
    from_caller = reclaim_holder(pools, caller)
    waits: list[Any] = []
    for group in groups:
        with contextlib.suppress(pykka.ActorDeadError):
            stop = StopWorkers(max(0.0, deadline - time.monotonic()), kill=False)
            waits.append(group.ask(stop, block=False))
    for pool in pools:
        drained: ThreadingFuture[Any] = ThreadingFuture()
        with contextlib.suppress(pykka.ActorDeadError):
            pool.tell(AwaitDrained(drained))
            waits.append(drained)
    for wait in waits:  # 2. everyone has until the deadline, unless hurried
        _wait(wait, deadline, hurry)
    if settle is not None:
        settle()
    reclaimed: list[Lease] = []
    for pool in pools:  # 3. take back what is still out, end the stragglers
        with contextlib.suppress(LessorError):
            reclaimed += ask(pool, ReclaimAll("shutdown deadline"), 5, "a pool")
    killed: list[str] = []
    for group in groups:
        with contextlib.suppress(LessorError):
            killed += ask(group, StopWorkers(0.0), 30, "a worker group")
    within = HURRIED_STOP if hurry.is_set() else None
    with contextlib.suppress(LessorError):  # 4. the tree, in reverse start order
        killed += ask(root, StopChildren(within), 60)
    with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
        root.stop(block=True, timeout=5)
    return reclaimed, from_caller, killed


def _wait(future: Any, deadline: float, hurry: Event) -> None:
    """Wait for ``future`` until ``deadline``, in slices, unless told to hurry."""
    while not hurry.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            future.get(timeout=min(SLICE, left))
        except pykka.Timeout:
            continue
        except Exception:  # answered with an error: nothing more to wait for
            return
        return
