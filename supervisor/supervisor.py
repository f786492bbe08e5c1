"""Supervisor: an actor that starts, watches, restarts and stops its children (OTP).

Children start in spec order and stop in reverse order. When one exits, the pure
:class:`RestartPlanner` decides what happens; this actor only carries it out.
Past the restart intensity it stops every child and fails, so its own supervisor
(or the Runtime, for the root) hears of it: that is escalation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import pykka

from lessor.actors.scheduler import Timer, process_scheduler
from lessor.errors import SupervisorGaveUp
from lessor.specs import ChildSpec, SupervisorSpec
from lessor.supervisor.child import ChildRef, ChildState, watched
from lessor.supervisor.events import EventLog
from lessor.supervisor.restarts import GiveUp, Remove, RestartIntensity, RestartPlanner

__all__ = [
    "AddChild",
    "DelayedRestarts",
    "GetTree",
    "RemoveChild",
    "RestartsDue",
    "StopChildren",
    "Supervisor",
    "start_supervised",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AddChild:
    """Start one more child (last in start order); answered with its ChildRef."""

    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class GetTree:
    """Answered with this supervisor's subtree as nested dicts."""


@dataclass(frozen=True, slots=True)
class RemoveChild:
    """Stop a child and forget it (OTP terminate_child + delete_child)."""

    id: str


@dataclass(frozen=True, slots=True)
class StopChildren:
    """Stop every child in reverse start order; answered with the ids that had to be killed.

    ``within`` caps each child's shutdown time (a hurried shutdown).
    """

    within: float | None = None


@dataclass(frozen=True, slots=True)
class _ChildExited:
    child: ChildRef
    incarnation: int
    reason: BaseException | None


@dataclass(frozen=True, slots=True)
class RestartsDue:
    """Told by :class:`DelayedRestarts` when a delayed restart's time has come."""


class DelayedRestarts(Generic[T]):
    """Restarts waiting out their backoff, and the timer that wakes the actor for them.

    Shared by :class:`Supervisor` and the worker groups. The process's scheduler
    (the one deadline thread every actor shares) tells the actor ``RestartsDue``;
    ``close`` cancels the timer and drops what is still waiting. Only the owning
    actor calls these.
    """

    def __init__(self, ref: pykka.ActorRef[Any], name: str) -> None:
        self._ref = ref
        self._name = name
        self._timer: Timer | None = None
        self._waiting: list[tuple[float, T]] = []
        self._closed = False

    def add(self, when: float, item: T) -> None:
        """Hold ``item`` until ``when`` (monotonic seconds), when the actor hears RestartsDue."""
        if self._closed:
            return
        if self._timer is None:
            ref = self._ref
            self._timer = process_scheduler().timer(lambda: ref.tell(RestartsDue()))
        self._waiting.append((when, item))
        self._timer.schedule(when)

    def due(self, now: float) -> list[T]:
        """The items whose time has come, in the order they were added; re-arms for the rest."""
        ready = [item for when, item in self._waiting if when <= now]
        self._waiting = [(when, item) for when, item in self._waiting if when > now]
        if self._waiting and self._timer is not None:
            self._timer.schedule(min(when for when, _ in self._waiting))
        return ready

    def close(self) -> None:
        """Drop every waiting restart and cancel the timer. Idempotent."""
        self._closed = True
        self._waiting = []
        if self._timer is not None:
            self._timer.cancel()


def start_supervised(
    cls: type[pykka.Actor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    on_exit: Callable[[BaseException | None], None],
    restartable: bool,
    path: str = "",
) -> pykka.ActorRef[Any]:
    """Start one incarnation of an actor whose exit is reported to ``on_exit``; it
    prints (logs, errors) as ``path``."""
    ref: pykka.ActorRef[Any] = watched(cls, on_exit, restartable, path).start(*args, **kwargs)
    return ref


def _kind(spec: ChildSpec) -> str:
    if isinstance(spec.start, SupervisorSpec):
        return "supervisor"
    return str(getattr(spec.start, "lessor_kind", "actor"))


class Supervisor(pykka.ThreadingActor):
    """Supervises the children of ``spec``; ``path`` names it in events and trees."""

    use_daemon_thread = True  # a child that ignores its shutdown must not pin the process

    def __init__(self, spec: SupervisorSpec, events: EventLog, path: str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.events = events
        self.path = path or spec.id
        self.children: list[ChildRef] = []
        self.planner = RestartPlanner(
            spec.strategy, RestartIntensity(spec.max_restarts, spec.max_seconds), spec.backoff
        )
        self.killed: list[str] = []
        self._delayed = DelayedRestarts[tuple[ChildRef, ...]](
            self.actor_ref, f"lessor-{self.path}-backoff"
        )

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        for spec in self.spec.children:
            self._add(spec)

    def on_stop(self) -> None:
        self._stop_all()

    def on_failure(self, *_exc: Any) -> None:
        self._stop_all()

    def _stop_all(self, within: float | None = None) -> None:
        for child in reversed(self.children):
            self._stop_child(child, within)
        self._delayed.close()

    # -- messages ----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _ChildExited):
            self._on_exit(message)
        elif isinstance(message, AddChild):
            return self._add(message.spec)
        elif isinstance(message, GetTree):
            return self.tree()
        elif isinstance(message, RemoveChild):
            for child in [c for c in self.children if c.id == message.id]:
                self._stop_child(child)
                self.children.remove(child)
        elif isinstance(message, StopChildren):
            self._stop_all(message.within)
            return list(self.killed)
        elif isinstance(message, RestartsDue):
            for children in self._delayed.due(time.monotonic()):
                self._restart(children)
        else:
            return super().on_receive(message)
        return None

    def tree(self) -> dict[str, Any]:
        nodes = []
        for child in self.children:
            node: dict[str, Any] = {
                "id": child.id,
                "kind": _kind(child.spec),
                "actor": getattr(child.spec.start, "__name__", None),
                "state": child.state,
                "restarts": child.restarts,
                "uptime_s": round(child.uptime(), 3),
                "children": [],
            }
            ref = child.ref
            if node["kind"] == "supervisor" and child.state == ChildState.RUNNING and ref:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    subtree = cast(dict[str, Any], ref.ask(GetTree(), timeout=5))
                    node["children"] = subtree["children"]
            nodes.append(node)
        return {"id": self.spec.id, "kind": "supervisor", "strategy": self.spec.strategy,
                "children": nodes}  # fmt: skip

    # -- starting and stopping children ------------------------------------------------

    def _add(self, spec: ChildSpec) -> ChildRef:
        if any(child.id == spec.id for child in self.children):
            raise ValueError(f"{self.path} already has a child {spec.id!r}")
        child = ChildRef(spec, f"{self.path}/{spec.id}")
        self.children.append(child)
        self._start(child)
        return child

    def _start(self, child: ChildRef) -> None:
        spec = child.spec
        child.incarnation += 1
        incarnation = child.incarnation
        me = self.actor_ref

        def on_exit(reason: BaseException | None) -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                me.tell(_ChildExited(child, incarnation, reason))

        if isinstance(spec.start, SupervisorSpec):
            cls: type[pykka.Actor] = Supervisor
            args: tuple[Any, ...] = (spec.start, self.events, child.path)
            kwargs: dict[str, Any] = {}
        else:
            cls, args, kwargs = spec.start, spec.args, spec.kwargs
        ref = start_supervised(cls, args, kwargs, on_exit, spec.restart != "temporary", child.path)
        child.set_state(ChildState.RUNNING, ref)
        self.events.emit("started", child.path, f"incarnation {incarnation}")

    def _stop_child(self, child: ChildRef, within: float | None = None) -> None:
        ref = child.ref
        if child.state in (ChildState.STOPPED, ChildState.STOPPING) or ref is None:
            child.set_state(ChildState.STOPPED)
            return
        child.set_state(ChildState.STOPPING)
        shutdown = child.spec.shutdown
        killed = shutdown == "brutal_kill"
        try:
            if killed:
                ref.stop(block=False)
            else:
                wait = float(shutdown) if within is None else min(float(shutdown), within)
                ref.stop(block=True, timeout=wait)
        except pykka.Timeout:
            killed = True
        except pykka.ActorDeadError:
            pass
        child.set_state(ChildState.STOPPED)
        if killed:
            self.killed.append(child.path)
            self.events.emit("killed", child.path, f"shutdown={shutdown}")
        else:
            self.events.emit("stopped", child.path)

    # -- failures ----------------------------------------------------------------------

    def _on_exit(self, message: _ChildExited) -> None:
        child = message.child
        if message.incarnation != child.incarnation or child.state != ChildState.RUNNING:
            return  # an exit we caused, or news of an earlier incarnation
        reason = message.reason
        if reason is not None:
            self.events.emit("failed", child.path, f"{type(reason).__name__}: {reason}")
        else:
            self.events.emit("exited", child.path, "stopped by itself")
        index = self.children.index(child)
        plan = self.planner.child_exited(
            time.monotonic(),
            index,
            reason is not None,
            [c.spec.restart for c in self.children],
            [c.state == ChildState.RUNNING for c in self.children],
        )
        if isinstance(plan, Remove):
            child.set_state(ChildState.STOPPED)
            self.children.remove(child)
            self.events.emit("removed", child.path, child.spec.restart)
            return
        if isinstance(plan, GiveUp):
            child.set_state(ChildState.STOPPED)
            self.events.emit("gave_up", self.path, plan.reason)
            self._stop_all()
            self.events.emit("escalated", self.path, f"after {child.path} failed")
            raise SupervisorGaveUp(f"{self.path} gave up: {plan.reason}") from reason
        child.set_state(ChildState.RESTARTING)
        for i in plan.stop:
            self._stop_child(self.children[i])
        starting = tuple(self.children[i] for i in plan.start)
        for i in sorted(plan.remove, reverse=True):
            self.events.emit("removed", self.children[i].path, "temporary sibling")
            del self.children[i]
        for c in starting:
            c.set_state(ChildState.RESTARTING)
        if plan.delay > 0:
            self._delayed.add(time.monotonic() + plan.delay, starting)
        else:
            self._restart(starting)

    def _restart(self, children: tuple[ChildRef, ...]) -> None:
        for child in children:
            if child in self.children and child.state == ChildState.RESTARTING:
                child.restarts += 1
                self._start(child)
                self.events.emit("restarted", child.path, f"restart {child.restarts}")
