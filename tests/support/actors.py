"""Test actors with observable lifecycles, and a pool that crashes on demand, for tests."""

from __future__ import annotations

import threading
from typing import Any

import pykka

from lessor import ChildSpec, LeaseExpired, PoolHandle, PoolSpec, Runtime
from lessor.actors.base import actor_of
from lessor.actors.pool import PoolActor, PoolLineage
from lessor.errors import LessorError
from lessor.handles.actor_route import ActorRoute
from lessor.handles.local import LocalRoute
from tests.support.helpers import wait_until


class Journal:
    """Thread-safe record of lifecycle events and of the live refs by name."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.refs: dict[str, pykka.ActorRef[Any]] = {}
        self.starts: dict[str, int] = {}
        self.fail_starts: dict[str, int] = {}  # name -> how many more starts must fail
        self._lock = threading.Lock()

    def add(self, what: str, name: str) -> None:
        with self._lock:
            self.entries.append((what, name))

    def of(self, what: str) -> list[str]:
        with self._lock:
            return [name for kind, name in self.entries if kind == what]


class Worker(pykka.ThreadingActor):
    """Replies to anything; ``"crash"`` raises, ``"exit"`` stops it normally.

    ``("hold", event)`` blocks the actor until the event is set, so asks queue up.
    """

    def __init__(self, journal: Journal, name: str, stop_gate: threading.Event | None = None):
        super().__init__()
        self.journal = journal
        self.name = name
        self.stop_gate = stop_gate

    def on_start(self) -> None:
        j = self.journal
        j.starts[self.name] = j.starts.get(self.name, 0) + 1
        j.refs[self.name] = self.actor_ref
        if j.fail_starts.get(self.name, 0) > 0:
            j.fail_starts[self.name] -= 1
            j.add("start_failed", self.name)
            raise RuntimeError(f"{self.name} cannot start")
        j.add("start", self.name)

    def on_stop(self) -> None:
        if self.stop_gate is not None:
            self.stop_gate.wait(30)
        self.journal.add("stop", self.name)

    def on_failure(self, *_: Any) -> None:
        self.journal.add("failure", self.name)

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed")
        if message == "exit":
            self.actor_ref.stop(block=False)
            return None
        if isinstance(message, tuple) and message[0] == "hold":
            message[1].wait(30)
            return None
        return message


class CrashablePool(PoolActor):
    """A PoolActor that fails on the message "crash", like a bug would."""

    def handle_internal(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("pool bug")
        return super().handle_internal(message)


def crashable(runtime: Runtime, spec: PoolSpec) -> PoolHandle:
    """A supervised pool of ``runtime`` whose actor crashes when told "crash"."""
    child = runtime.add_child(
        ChildSpec(spec.name, CrashablePool, (spec,), {"lineage": PoolLineage()})
    )
    return PoolHandle(LocalRoute(child, spec))


class Borrower(pykka.ThreadingActor):
    """An actor that holds leases and records the LeaseExpired notices it receives."""

    def __init__(self, pool: PoolHandle, notices: list[LeaseExpired], got: threading.Event):
        super().__init__()
        self.pool = pool
        self.notices = notices
        self.got = got

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, LeaseExpired):
            self.notices.append(message)
            self.got.set()
            return None
        if isinstance(message, tuple) and message[0] == "borrow":
            return self.pool.acquire(timeout=5, ttl=message[1])
        if message == "crash":
            raise RuntimeError("borrower crashed")
        return None


def crash_actor(route: ActorRoute, timeout: float) -> None:
    """Make the actor behind ``route`` fail as a bug would (a non-lessor error in a
    turn), and wait up to ``timeout`` s until its supervisor runs the next incarnation."""
    ref = route.current_ref(timeout)
    actor = actor_of(ref)
    assert actor is not None
    handle_internal = actor.handle_internal
    bug = object()

    def buggy(message: Any) -> Any:  # this incarnation only; the next one is a new object
        if message is bug:
            raise RuntimeError(f"{route.label} bug")
        return handle_internal(message)

    actor.handle_internal = buggy  # type: ignore[method-assign]
    actor.deliver_internal(bug)

    def replaced() -> bool:
        try:
            return route.current_ref(0.0) is not ref  # (only a running incarnation is returned)
        except LessorError:  # restarting
            return False

    assert wait_until(replaced, timeout=timeout)
