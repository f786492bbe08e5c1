"""WorkerGroup: an actor that runs N worker processes as supervised children.

Each process is watched by a thread blocked on its sentinel (``join``), so a death
is known the moment the kernel reports it, not by a heartbeat. A dead worker's
connection is dropped at once, which reclaims its leases and drops its waiters.
Exits are restarted by restart type (permanent, transient, temporary) within the
group's restart intensity; past it the group stops its workers and fails, which
escalates to its supervisor like any other child.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from multiprocessing.process import BaseProcess
from typing import Any

import pykka

from lessor.errors import SupervisorGaveUp
from lessor.messages import Drain
from lessor.node import Node
from lessor.specs import Restart, _nonempty, _positive, _require
from lessor.supervisor.events import EventLog
from lessor.supervisor.restarts import RestartIntensity
from lessor.worker import run_worker

__all__ = ["AwaitDone", "StopWorkers", "WorkerGroup", "WorkerSpec"]

#: After SIGTERM, how long a worker gets before SIGKILL.
TERM_GRACE = 1.0


@dataclass(frozen=True)
class WorkerSpec:
    """``n`` processes running ``target(*args)``; ``target`` must be a module-level function."""

    id: str
    target: Callable[..., Any]
    n: int = 1
    args: tuple[Any, ...] = ()
    restart: Restart = "permanent"
    max_restarts: int = 10
    max_seconds: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    #: Process-scoped pool specs each worker runs its own pool of.
    pools: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _nonempty("id", self.id)
        _require(callable(self.target), "target", "must be callable", self.target)
        _require(isinstance(self.n, int) and self.n >= 1, "n", "must be an int >= 1", self.n)
        _require(self.restart in ("permanent", "transient", "temporary"), "restart",
                 "must be permanent, transient or temporary", self.restart)  # fmt: skip
        _require(isinstance(self.max_restarts, int) and self.max_restarts >= 0, "max_restarts",
                 "must be an int >= 0", self.max_restarts)  # fmt: skip
        _positive("max_seconds", self.max_seconds)


@dataclass(frozen=True, slots=True)
class StopWorkers:
    """Drain the workers and wait up to ``timeout`` for them to exit; then, if ``kill``,
    SIGTERM the stragglers and SIGKILL them after TERM_GRACE. No restarts from here on.

    Answered with the worker ids that had to be terminated or killed.
    """

    timeout: float
    kill: bool = True


@dataclass(frozen=True, slots=True)
class AwaitDone:
    """``reply`` is answered once every worker has exited for good (transient/temporary)."""

    reply: Any


@dataclass(frozen=True, slots=True)
class _Exited:
    slot: int
    incarnation: int


@dataclass(eq=False)
class _Slot:
    index: int
    incarnation: int = 0
    process: BaseProcess | None = None
    worker_id: str = ""
    restarts: int = 0
    done: bool = False  # exited for good (temporary, or transient with status 0)


class WorkerGroup(pykka.ThreadingActor):
    """Supervises the processes of one WorkerSpec."""

    lessor_kind = "workers"
    use_daemon_thread = True

    def __init__(self, spec: WorkerSpec, node: Node, events: EventLog, path: str = "") -> None:
        super().__init__()
        self.spec = spec
        self.node = node
        self.events = events
        self.path = path or spec.id
        self.slots = [_Slot(i) for i in range(spec.n)]
        self.intensity = RestartIntensity(spec.max_restarts, spec.max_seconds)
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False
        self._watchers: list[threading.Thread] = []
        self._done_replies: list[Any] = []
        self.exit_codes: list[int | None] = []

    def on_start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def on_stop(self) -> None:
        self._stop_all(0.0)

    def on_failure(self, *_: Any) -> None:
        self._stop_all(0.0)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Exited):
            self._on_exit(message)
            return None
        if isinstance(message, StopWorkers):
            return self._stop_all(message.timeout, message.kill)
        if isinstance(message, AwaitDone):
            self._done_replies.append(message.reply)
            self._answer_done()
            return None
        if message == "pids":
            return [s.process.pid for s in self.slots if s.process is not None and not s.done]
        if message == "status":
            return self.status()
        return super().on_receive(message)

    def status(self) -> list[dict[str, Any]]:
        return [
            {"id": s.worker_id, "pid": s.process.pid if s.process else None,
             "alive": s.process is not None and s.process.exitcode is None,
             "restarts": s.restarts, "done": s.done}
            for s in self.slots
        ]  # fmt: skip

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        slot.incarnation += 1
        slot.worker_id = f"{self.path}.{slot.index}.{slot.incarnation}"
        env = {**self.spec.env, **self.node.env(slot.worker_id)}
        process = self._ctx.Process(
            target=run_worker,
            args=(self.spec.target, self.spec.args, env, self.spec.pools),
            name=f"lessor-{slot.worker_id}",
        )
        process.start()
        slot.process = process
        me, incarnation = self.actor_ref, slot.incarnation

        def watch() -> None:
            process.join()
            with contextlib.suppress(pykka.ActorDeadError):
                me.tell(_Exited(slot.index, incarnation))

        watcher = threading.Thread(target=watch, name=f"lessor-watch-{slot.worker_id}",
                                   daemon=True)  # fmt: skip
        watcher.start()
        self._watchers = [w for w in self._watchers if w.is_alive()] + [watcher]
        self.events.emit("started", slot.worker_id, f"pid {process.pid}")

    def _on_exit(self, message: _Exited) -> None:
        slot = self.slots[message.slot]
        process = slot.process
        if message.incarnation != slot.incarnation or process is None or self._stopping:
            return
        self.node.disconnect(slot.worker_id)  # reclaim now, even if the socket lingers
        code = process.exitcode
        self.exit_codes.append(code)
        abnormal = code != 0
        self.events.emit("failed" if abnormal else "exited", slot.worker_id, f"exit code {code}")
        restart = self.spec.restart
        if restart == "temporary" or (restart == "transient" and not abnormal):
            slot.done = True
            self.events.emit("removed", slot.worker_id, restart)
            self._answer_done()
            return
        if not self.intensity.add(time.monotonic()):
            self.events.emit("gave_up", self.path, f"{self.intensity.recent} worker restarts")
            self._stop_all(0.0)
            raise SupervisorGaveUp(f"{self.path}: workers keep dying (last exit code {code})")
        slot.restarts += 1
        self._spawn(slot)
        self.events.emit("restarted", slot.worker_id, f"restart {slot.restarts}")

    def _answer_done(self) -> None:
        if self._done_replies and all(slot.done for slot in self.slots):
            for reply in self._done_replies:
                reply.set(None)
            self._done_replies.clear()

    def _stop_all(self, timeout: float, kill: bool = True) -> list[str]:
        """Drain, wait until ``timeout``, SIGTERM, wait TERM_GRACE, SIGKILL. Idempotent.

        Only the watcher threads reap (``join``): two threads in ``waitpid`` on one
        child race, and the loser sees no exit code. Here we wait on sentinels.
        """
        self._stopping = True
        live = [s for s in self.slots if s.process is not None and not _ended(s.process, 0)]
        deadline = time.monotonic() + timeout
        for slot in live:
            self.node.push(slot.worker_id, Drain(timeout))
        for slot in live:
            assert slot.process is not None
            _ended(slot.process, deadline - time.monotonic())
        if not kill:
            return []
        forced = [s for s in live if s.process is not None and not _ended(s.process, 0)]
        for slot in forced:
            assert slot.process is not None
            slot.process.terminate()
        grace = time.monotonic() + TERM_GRACE
        for slot in forced:
            assert slot.process is not None
            if not _ended(slot.process, grace - time.monotonic()):
                slot.process.kill()
                _ended(slot.process, 5.0)
        for watcher in self._watchers:
            if watcher is not threading.current_thread():
                watcher.join(5)  # it reaps its process
        for slot in forced:
            assert slot.process is not None
            self.events.emit("killed", slot.worker_id, f"exit code {slot.process.exitcode}")
        for slot in self.slots:
            if slot.process is not None:
                self.node.disconnect(slot.worker_id)
                with contextlib.suppress(ValueError):  # only if it would not die at all
                    slot.process.close()
                slot.process = None
        return [s.worker_id for s in forced]


def _ended(process: BaseProcess, timeout: float) -> bool:
    """Whether the process has exited, waiting up to ``timeout`` (without reaping it)."""
    return bool(mp_wait([process.sentinel], max(0.0, timeout)))
