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
from typing import Any, cast

import pykka

from lessor.actors.timer import DeadlineTimer
from lessor.errors import SupervisorGaveUp
from lessor.specs import ChildSpec, SupervisorSpec
from lessor.supervisor.child import ChildRef, ChildState, watched
from lessor.supervisor.events import EventLog
from lessor.supervisor.restarts import GiveUp, Remove, RestartIntensity, RestartPlanner

__all__ = ["AddChild", "GetTree", "RemoveChild", "StopChildren", "Supervisor", "start_supervised"]


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
class _RestartDue:
    pass


def start_supervised(
    cls: type[pykka.Actor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    on_exit: Callable[[BaseException | None], None],
    restartable: bool,
) -> pykka.ActorRef[Any]:
    """Start one incarnation of an actor whose exit is reported to ``on_exit``."""
    ref: pykka.ActorRef[Any] = watched(cls, on_exit, restartable).start(*args, **kwargs)
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
        self._timer: DeadlineTimer | None = None
        self._due: list[tuple[float, tuple[ChildRef, ...]]] = []
        self.killed: list[str] = []

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
        if self._timer is not None:
            self._timer.close()

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
        elif isinstance(message, _RestartDue):
            self._restart_due()
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
        ref = start_supervised(cls, args, kwargs, on_exit, spec.restart != "temporary")
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
            self._schedule(time.monotonic() + plan.delay, starting)
        else:
            self._restart(starting)

    def _restart(self, children: tuple[ChildRef, ...]) -> None:
        for child in children:
            if child in self.children and child.state == ChildState.RESTARTING:
                child.restarts += 1
                self._start(child)
                self.events.emit("restarted", child.path, f"restart {child.restarts}")

    def _schedule(self, when: float, children: tuple[ChildRef, ...]) -> None:
        if self._timer is None:
            me = self.actor_ref
            self._timer = DeadlineTimer(
                lambda: me.tell(_RestartDue()), name=f"lessor-{self.path}-backoff"
            )
        self._due.append((when, children))
        self._timer.schedule(when)

    def _restart_due(self) -> None:
        now = time.monotonic()
        due = [children for when, children in self._due if when <= now]
        self._due = [(when, children) for when, children in self._due if when > now]
        for children in due:
            self._restart(children)
        if self._due and self._timer is not None:
            self._timer.schedule(min(when for when, _ in self._due))
