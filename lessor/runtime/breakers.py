"""The runtime's circuit breakers: one supervised BreakerActor and one handle per name."""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections.abc import Callable
from typing import Any

from lessor.actors.breaker import BreakerActor, BreakerLineage
from lessor.core.breaker import IGNORED
from lessor.errors import LessorError, NoSuchBreaker
from lessor.handles.actor_route import ActorRoute
from lessor.handles.breaker import Breaker
from lessor.holder import Holder
from lessor.protocol.messages import ProbePermit, ProbeResult
from lessor.specs import BreakerSpec, ChildSpec, Restart
from lessor.supervisor.child import ChildRef
from lessor.supervisor.events import EventLog

__all__ = ["BreakerTarget", "Breakers"]


class BreakerTarget(ActorRoute):
    """The breaker's actor in this process: what in-process handles ask and what the
    runtime's node delivers workers' requests to."""

    kind = "breaker"

    def undo(self, answer: Any, holder: Holder) -> None:
        """A probe permit its caller never saw (it gave up, or was interrupted) goes back."""
        if isinstance(answer, ProbePermit):
            self.deliver(ProbeResult(self.name, answer.probe, IGNORED), None, holder)


class Breakers:
    """Breakers by name; their specs go to every worker spawned after they were added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[str, Breaker] = {}
        self.targets: dict[str, BreakerTarget] = {}

    def add(
        self,
        spec: BreakerSpec,
        add_child: Callable[[ChildSpec], ChildRef],
        events: EventLog,
        restart: Restart,
        shutdown: float,
    ) -> tuple[Breaker, BreakerTarget]:
        if not isinstance(spec, BreakerSpec):
            raise TypeError(f"add_breaker takes a BreakerSpec, not {type(spec).__name__}")
        with self._lock:
            if spec.name in self._handles:
                raise ValueError(f"a breaker named {spec.name!r} exists already")
        kwargs: dict[str, Any] = {"lineage": BreakerLineage(), "events": events}
        child = add_child(
            ChildSpec(f"breaker:{spec.name}", BreakerActor, (spec,), kwargs, restart, shutdown)
        )
        target = BreakerTarget(child, spec.name)
        handle = Breaker(spec, target, in_process=True)
        handle.subscribe()
        with self._lock:
            self._handles[spec.name] = handle
            self.targets[spec.name] = target
        return handle, target

    def all(self) -> dict[str, Breaker]:
        with self._lock:
            return dict(self._handles)

    def get(self, name: str) -> Breaker:
        try:
            return self._handles[name]
        except KeyError:
            raise NoSuchBreaker(f"no breaker named {name!r} in this runtime") from None

    def for_workers(self) -> dict[str, BreakerSpec]:
        """The specs workers get; their error filters must pickle (TypeError if not)."""
        with self._lock:
            specs = {name: handle.spec for name, handle in self._handles.items()}
        for name, spec in specs.items():
            try:
                pickle.dumps(spec)
            except Exception as exc:
                raise TypeError(
                    f"breaker {name!r} cannot reach worker processes: its record_errors or "
                    f"ignore_errors must pickle (a module-level function, not a lambda): {exc}"
                ) from None
        return specs

    def close(self) -> None:
        """Send the outcomes the handles hold and stop their timers."""
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            with contextlib.suppress(LessorError):
                handle.close()
