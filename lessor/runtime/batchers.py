"""The runtime's batchers: one supervised BatchActor and one handle per name."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from lessor import errors as lessor_errors
from lessor.actors.batch import AwaitIdle, BatchActor, BatchLineage, FailOutstanding, StartDrain
from lessor.actors.reply import Reply
from lessor.errors import LessorError, NoSuchBatcher, ProtocolError, RuntimeStopped
from lessor.handles.actor_route import ActorRoute
from lessor.handles.batcher import Batcher, _Pending
from lessor.handles.ops import REQUEST_TIMEOUT
from lessor.holder import Holder, current_holder
from lessor.protocol.codec import pack
from lessor.protocol.messages import Message, Results, Submit
from lessor.specs import BatchSpec, ChildSpec, Restart
from lessor.specs.batch import BatchLimits
from lessor.supervisor.child import ChildRef
from lessor.supervisor.events import EventLog

__all__ = ["BatcherTarget", "Batchers"]


def _error_type(exc: BaseException) -> str:
    """How a worker is told what failed: ``lessor.<Name>`` for a lessor error (it is
    raised there as that class), else the exception's type name."""
    if isinstance(exc, LessorError):
        for cls in type(exc).__mro__:
            if getattr(lessor_errors, cls.__name__, None) is cls:
                return f"lessor.{cls.__name__}"
    return type(exc).__name__


class _WireResults:
    """A worker's Submit: its outcomes (results, exceptions) go back as one Results frame.

    An outcome that cannot cross (not msgpack-safe) fails its own item only.
    """

    __slots__ = ("batcher", "reply", "results")

    def __init__(self, reply: Reply, batcher: str, results: bool) -> None:
        self.reply = reply
        self.batcher = batcher
        self.results = results

    def set(self, value: Any = None) -> bool | None:
        if not isinstance(value, list):  # a flush's answer
            return self.reply.set(value)
        values: list[Any] = []
        errors: list[list[Any]] = []
        for index, outcome in enumerate(value):
            failed = isinstance(outcome, BaseException)
            if failed:
                errors.append([index, _error_type(outcome), str(outcome)])
            values.append(None if failed else outcome)
        if self.results:
            try:
                pack(values)
            except ProtocolError:
                for index, outcome in enumerate(values):
                    try:
                        pack(outcome)
                    except ProtocolError as exc:
                        values[index] = None
                        errors.append([index, "lessor.ProtocolError", f"its result: {exc}"])
        return self.reply.set(Results(self.batcher, values if self.results else [], errors))

    def set_exception(self, exc_info: Any = None) -> bool | None:
        return self.reply.set_exception(exc_info)


class BatcherTarget(ActorRoute):
    """The batcher's actor in this process: what the in-process handle sends to and what
    the runtime's node delivers workers' Submits to."""

    kind = "batcher"

    def send(self, message: Message, pending: _Pending, wait: float) -> None:
        """The in-process handle: deliver; the answer goes to ``pending``."""
        self._actor(wait).deliver(message, pending, current_holder())

    def deliver(self, message: Message, reply: Reply | None, holder: Holder) -> None:
        if reply is not None and isinstance(message, Submit):
            reply = _WireResults(reply, self.name, message.results)
        super().deliver(message, reply, holder)


class Batchers:
    """Batchers by name; what workers need of them goes to every worker spawned after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[str, Batcher] = {}
        self._lineages: dict[str, BatchLineage] = {}
        self.targets: dict[str, BatcherTarget] = {}

    def add(
        self,
        spec: BatchSpec,
        add_child: Callable[[ChildSpec], ChildRef],
        events: EventLog,
        restart: Restart,
        shutdown: float,
    ) -> tuple[Batcher, BatcherTarget]:
        if not isinstance(spec, BatchSpec):
            raise TypeError(f"add_batcher takes a BatchSpec, not {type(spec).__name__}")
        with self._lock:
            if spec.name in self._handles:
                raise ValueError(f"a batcher named {spec.name!r} exists already")
        lineage = BatchLineage()
        kwargs: dict[str, Any] = {"lineage": lineage, "events": events}
        child = add_child(
            ChildSpec(f"batcher:{spec.name}", BatchActor, (spec,), kwargs, restart, shutdown)
        )
        target = BatcherTarget(child, spec.name)
        handle = Batcher(spec.limits, target, in_process=True)
        with self._lock:
            self._handles[spec.name] = handle
            self._lineages[spec.name] = lineage
            self.targets[spec.name] = target
        return handle, target

    def all(self) -> dict[str, Batcher]:
        with self._lock:
            return dict(self._handles)

    def get(self, name: str) -> Batcher:
        try:
            return self._handles[name]
        except KeyError:
            raise NoSuchBatcher(f"no batcher named {name!r} in this runtime") from None

    def for_workers(self) -> dict[str, BatchLimits]:
        with self._lock:
            return {name: handle.limits for name, handle in self._handles.items()}

    def live(self) -> list[pykka.ActorRef[Any]]:
        refs = []
        for target in list(self.targets.values()):
            with contextlib.suppress(LessorError):
                refs.append(target.current_ref(0.0))
        return refs

    def drain(self) -> None:
        """Shutdown begins: every batcher runs what it holds as soon as it can."""
        for ref in self.live():
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(StartDrain())

    def wait_idle(self, deadline: float, hurry: threading.Event) -> None:
        """Until ``deadline``: wait for every batcher to have nothing left to run."""
        for ref in self.live():
            idle = threading.Event()
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(AwaitIdle(idle))
                while not hurry.is_set() and (left := deadline - time.monotonic()) > 0:
                    if idle.wait(min(0.05, left)):
                        break

    def fail_outstanding(self) -> dict[str, int]:
        """The deadline: what each batcher could not finish fails (RuntimeStopped)."""
        left: dict[str, int] = {}
        error = RuntimeStopped("the runtime shut down before this item was processed")
        for name, target in list(self.targets.items()):
            with contextlib.suppress(LessorError, pykka.ActorDeadError, pykka.Timeout):
                ref = target.current_ref(0.0)
                count: int = ref.ask(FailOutstanding(error), block=True, timeout=REQUEST_TIMEOUT)
                if count:
                    left[name] = count
        return left

    def close(self) -> dict[str, int]:
        """After the tree stopped: nothing waits for ever, and the processor threads end."""
        error = RuntimeStopped("the runtime stopped before this item was processed")
        with self._lock:
            handles, lineages = list(self._handles.values()), dict(self._lineages)
        left: dict[str, int] = {}
        for name, lineage in lineages.items():
            count = lineage.close(error, time.monotonic())
            if count:
                left[name] = count
        for handle in handles:
            handle.close()
        return left
