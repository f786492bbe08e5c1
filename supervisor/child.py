"""A supervised child: its live record, and the monitor that reports its exit.

``ChildRef`` always points at the child's current incarnation; callers wait on it
while a restart is under way instead of failing. ``watched(cls, ...)`` makes a
subclass of any pykka actor class that tells its supervisor the moment the actor's
thread finishes, with the exception that killed it (an error in ``on_start``, in a
told message, or in ``on_stop``), and answers asks still in its inbox with
``ActorRestarted``/``ActorStopped`` so no caller hangs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pykka

from lessor.actors._pykka_compat import answer_waiting
from lessor.errors import ActorRestarted, ActorStopped
from lessor.holder import bind_actor
from lessor.specs import ChildSpec

__all__ = ["ChildRef", "ChildState", "watched"]


class ChildState:
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ChildRef:
    """The current incarnation of one child; shared by its supervisor and its users."""

    def __init__(self, spec: ChildSpec, path: str) -> None:
        self.spec = spec
        self.path = path
        self.state = ChildState.STARTING
        self.ref: pykka.ActorRef[Any] | None = None
        self.incarnation = 0
        self.restarts = 0
        self.started_at = time.monotonic()
        self._cond = threading.Condition()

    @property
    def id(self) -> str:
        return self.spec.id

    def set_state(self, state: str, ref: pykka.ActorRef[Any] | None = None) -> None:
        with self._cond:
            self.state = state
            if ref is not None:
                self.ref = ref
                self.started_at = time.monotonic()
            self._cond.notify_all()

    def current(self, timeout: float) -> pykka.ActorRef[Any]:
        """The running incarnation, waiting up to ``timeout`` through a restart."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                ref = self.ref
                if self.state == ChildState.RUNNING and ref is not None and ref.is_alive():
                    return ref
                if self.state == ChildState.STOPPED:
                    raise ActorStopped(f"{self.path} is stopped")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ActorRestarted(f"{self.path} is {self.state}; not back in {timeout:g}s")
                # A dead ref in RUNNING means the supervisor is about to hear of it.
                self._cond.wait(
                    min(remaining, 0.05) if self.state == ChildState.RUNNING else remaining
                )

    def uptime(self) -> float:
        return time.monotonic() - self.started_at if self.state == ChildState.RUNNING else 0.0


ExitCallback = Callable[[BaseException | None], None]


def watched(
    cls: type[pykka.Actor], on_exit: ExitCallback, restartable: bool, path: str = ""
) -> type[Any]:
    """A subclass of ``cls`` that reports its exit once; one per incarnation.

    It prints as its ``path`` in the tree (``root/pg (PoolActor)``), so log lines and
    errors, pykka's own included, name the child a user added rather than an actor URN.

    Built on pykka's public hooks only: a failing ``on_start``, a failure
    (``on_failure``) and a stop (``on_stop``) each report, after ``cls``'s own hook
    has run (a pool hands its orphaned leases over there, before a restart).
    """

    class Watched(cls):  # type: ignore[valid-type,misc]
        _lessor_reported = False

        if path:

            def __str__(self) -> str:
                return f"{path} ({cls.__name__})"

        def _lessor_exit(self, reason: BaseException | None) -> None:
            if self._lessor_reported:
                return
            self._lessor_reported = True
            if reason is not None and restartable:
                error: ActorStopped = ActorRestarted(f"{self} failed and is being restarted")
            else:
                error = ActorStopped(f"{self} stopped")
            answer_waiting(self.actor_inbox, error)
            on_exit(reason)

        def on_start(self) -> None:
            bind_actor(self.actor_ref)
            try:
                super().on_start()
            except BaseException as exc:
                self._lessor_exit(exc)
                raise

        def on_stop(self) -> None:
            try:
                super().on_stop()
            except BaseException as exc:
                self._lessor_exit(exc)
                raise
            self._lessor_exit(None)

        def on_failure(
            self,
            exc_type: type[BaseException] | None,
            exc_value: BaseException | None,
            traceback: TracebackType | None,
        ) -> None:
            try:
                super().on_failure(exc_type, exc_value, traceback)
            finally:
                self._lessor_exit(exc_value or RuntimeError(f"{exc_type} in {self}"))

    Watched.__name__ = cls.__name__
    Watched.__qualname__ = cls.__qualname__
    return Watched
