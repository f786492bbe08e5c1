"""WorkerGroup: an actor that runs N worker processes as supervised children.

Each process is watched by a thread blocked on its sentinel (``join``), so a death
is known the moment the kernel reports it, not by a heartbeat. A dead worker's
connection is dropped at once, which reclaims its leases and drops its waiters.
Then the :class:`RestartPlanner` decides, as a one_for_one Supervisor's does for an
actor (restart type, intensity window, backoff). Past the intensity the group stops
its workers and fails with :class:`WorkersFailed`, carrying the last traceback. The
Runtime adds groups as temporary children: a group that gave up is over for good,
neither restarted nor taking its supervisor down.

How the group ended goes to its ``outcome`` (finished, or why not), which
``Runtime.join`` and ``Runtime.map`` wait on without asking the actor.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import wait as mp_wait
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import pykka

from lessor.actors.scheduler import Timer, process_scheduler
from lessor.errors import LessorError, WorkersFailed
from lessor.protocol.messages import Drain
from lessor.supervisor.events import EventLog
from lessor.supervisor.restarts import GiveUp, Remove, RestartIntensity, RestartPlanner
from lessor.supervisor.supervisor import DelayedRestarts, RestartsDue
from lessor.supervisor.worker_messages import (
    Hurry,
    RecycleWorker,
    StopWorkers,
    WorkerInfo,
    WorkerPids,
    WorkerSpec,
    WorkerStatus,
)
from lessor.transport.node import Node
from lessor.worker.bootstrap import ENV_TRACEBACK, Spawned, run_worker

__all__ = ["Outcome", "RecycleWorker", "StopWorkers", "WorkerGroup", "WorkerInfo", "WorkerPids",
           "WorkerSpec", "WorkerStatus"]  # fmt: skip

#: After SIGTERM, how long a worker gets before SIGKILL.
TERM_GRACE = 1.0
#: How long the Drain push may wait for room in a worker's socket (it is not a hint).
DRAIN_PUSH_WAIT = 0.2
#: The longest a wait goes without looking at the hurry event.
SLICE = 0.05


class Outcome(Protocol):
    """Told how the group ended: the Runtime's GroupOutcome, which join and map wait on."""

    def finish(self) -> None: ...

    def fail(self, error: LessorError) -> None: ...


@dataclass(frozen=True, slots=True)
class _Exited:
    slot: int
    incarnation: int


@dataclass(eq=False)
class _Slot:
    index: int
    incarnation: int = 0
    process: BaseProcess | None = None  # the running process; None once it has exited
    pid: int | None = None  # of the current or last process
    started: float = 0.0  # time.monotonic() when the current or last process started
    worker_id: str = ""
    restarts: int = 0
    restarting: bool = False  # waiting out its backoff delay
    done: bool = False  # exited for good (temporary, or transient with status 0)
    recycling: str = ""  # why, while it is being recycled (RecycleWorker)
    recycles: int = 0
    terminated: bool = False  # a recycle sent it SIGTERM


@dataclass(frozen=True, slots=True)
class _RecycleDue:
    slot: int
    incarnation: int


class WorkerGroup(pykka.ThreadingActor):
    """Supervises the processes of one WorkerSpec.

    ``hurry``, once set, cuts every wait short: stragglers are SIGKILLed at once
    (a second Ctrl-C during a shutdown).
    """

    lessor_kind = "workers"
    use_daemon_thread = True

    def __init__(
        self,
        spec: WorkerSpec,
        node: Node,
        events: EventLog,
        path: str = "",
        *,
        outcome: Outcome,
        hurry: Hurry | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.node = node
        self.events = events
        self.path = path or spec.id
        self.outcome = outcome
        self.hurry: Hurry = hurry or threading.Event()
        self.slots = [_Slot(i) for i in range(spec.n)]
        self.planner = RestartPlanner(
            "one_for_one", RestartIntensity(spec.max_restarts, spec.max_seconds), spec.backoff
        )
        self._delayed = DelayedRestarts[_Slot](self.actor_ref, f"lessor-{self.path}-backoff")
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False
        self._watchers: list[threading.Thread] = []
        self._tracebacks = ""  # a private directory the workers leave tracebacks in
        self._recycle_timers: dict[int, Timer] = {}  # slot -> when to SIGTERM/SIGKILL it
        self.last_traceback = ""

    def on_start(self) -> None:
        # In the node's private directory: gone with it, even if this group never ends.
        where = os.path.dirname(self.node.address)
        self._tracebacks = tempfile.mkdtemp(prefix="tracebacks-", dir=where)
        try:
            for slot in self.slots:
                self._spawn(slot)
        except Exception as exc:  # pykka calls neither on_failure nor on_stop after this
            self._end(_failed(self.path, exc))
            raise

    def on_stop(self) -> None:
        self._end(None)

    def on_failure(self, _type: Any, exc: BaseException | None, _tb: Any) -> None:
        self._end(_failed(self.path, exc))

    def _end(self, failure: WorkersFailed | None) -> None:
        self._stop_all(0.0)
        shutil.rmtree(self._tracebacks, ignore_errors=True)
        stopped = WorkersFailed(f"{self.path} was stopped before its workers finished")
        self.outcome.fail(failure or stopped)

    def on_receive(self, message: Any) -> Any:
        match message:
            case _Exited():
                self._on_exit(message)
            case RestartsDue():
                for slot in self._delayed.due(time.monotonic()):
                    self._restart(slot)
            case StopWorkers(timeout, kill):
                return self._stop_all(timeout, kill)
            case WorkerPids():
                return [s.pid for s in self.slots if s.process is not None]
            case WorkerStatus():
                now = time.monotonic()
                return [WorkerInfo(s.worker_id, s.pid, s.process is not None, s.restarts,
                                   s.restarting, s.done, s.recycles,
                                   round(now - s.started, 3) if s.process else 0.0)
                        for s in self.slots]  # fmt: skip
            case RecycleWorker(worker_id, why, grace):
                return self._recycle(worker_id, why, grace)
            case _RecycleDue(index, incarnation):
                self._recycle_due(self.slots[index], incarnation)
            case _:
                return super().on_receive(message)
        return None

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        slot.incarnation += 1
        slot.worker_id = f"{self.path}.{slot.index}.{slot.incarnation}"  # root/workers-1.0.1
        env = {**self.spec.env, **self.node.env(slot.worker_id),
               ENV_TRACEBACK: self._traceback_path(slot)}  # fmt: skip
        process = self._ctx.Process(
            target=run_worker,
            args=(
                Spawned(self.spec.target, self.spec.args),
                env,
                self.spec.pools,
                self.spec.breakers,
                self.spec.batchers,
                (slot.index, self.spec.n),  # lessor.worker_index(), worker_count()
            ),
            name=f"lessor-{slot.worker_id}",
        )
        # SIGINT stays blocked in the new process until run_worker ignores it: a Ctrl-C
        # while it starts up must not kill it either. (Starting the resource tracker
        # unblocks SIGINT in this thread: it must be running before we block it.)
        resource_tracker.ensure_running()
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        assert process.pid is not None
        self.node.bind_pid(slot.worker_id, process.pid)
        slot.process, slot.pid, slot.started = process, process.pid, time.monotonic()
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

    def _traceback_path(self, slot: _Slot) -> str:
        return os.path.join(self._tracebacks, f"{slot.index}.{slot.incarnation}")

    def _read_traceback(self, slot: _Slot) -> str:
        path = self._traceback_path(slot)
        try:
            with open(path) as left:
                text = left.read()
            os.unlink(path)
        except OSError:
            return ""
        return text

    def _on_exit(self, message: _Exited) -> None:
        slot = self.slots[message.slot]
        process = slot.process
        if message.incarnation != slot.incarnation or process is None or self._stopping:
            return
        self.node.disconnect(slot.worker_id)  # reclaim now, even if the socket lingers
        code = process.exitcode  # its watcher has reaped it
        process.close()
        slot.process = None
        left = self._read_traceback(slot)
        self.last_traceback = left or self.last_traceback
        abnormal = code != 0
        detail = f"exit code {code}" + (f": {_last_line(left)}" if left else "")
        if slot.recycling:  # asked for: not a failure, and not one of the restarts
            self.events.emit("recycled", slot.worker_id, f"{slot.recycling}; {detail}")
            self._end_recycle(slot)
            slot.recycles += 1
            slot.restarts -= 1  # (_restart counts one)
            self._restart(slot)
            return
        self.events.emit("failed" if abnormal else "exited", slot.worker_id, detail)
        plan = self.planner.child_exited(
            time.monotonic(), slot.index, abnormal, [self.spec.restart] * len(self.slots),
            [s.process is not None for s in self.slots],
        )  # fmt: skip
        if isinstance(plan, Remove):
            slot.done = True
            self.events.emit("removed", slot.worker_id, self.spec.restart)
            if all(s.done for s in self.slots):
                self.outcome.finish()
        elif isinstance(plan, GiveUp):
            self.events.emit("gave_up", self.path, plan.reason)
            self._stop_all(0.0)
            raise WorkersFailed(
                f"{self.path}: workers keep failing ({plan.reason}); last exit code {code}",
                worker_traceback=self.last_traceback,
                exit_code=code,
            )
        elif plan.delay > 0:  # one_for_one: the plan restarts this worker alone
            slot.restarting = True
            self._delayed.add(time.monotonic() + plan.delay, slot)
        else:
            self._restart(slot)

    def _restart(self, slot: _Slot) -> None:
        slot.restarting = False
        slot.restarts += 1
        self._spawn(slot)
        self.events.emit("restarted", slot.worker_id, f"restart {slot.restarts}")

    # -- recycling ---------------------------------------------------------------------

    def _recycle(self, worker_id: str, why: str, grace: float) -> bool:
        slot = next((s for s in self.slots if s.worker_id == worker_id), None)
        if slot is None or slot.process is None or slot.recycling or self._stopping:
            return False
        slot.recycling = why
        self.events.emit("recycling", worker_id, why)
        self.node.push(worker_id, Drain(grace), wait=DRAIN_PUSH_WAIT)
        me, index, incarnation = self.actor_ref, slot.index, slot.incarnation
        timer = process_scheduler().timer(lambda: me.tell(_RecycleDue(index, incarnation)))
        self._recycle_timers[index] = timer
        timer.schedule(time.monotonic() + grace)
        return True

    def _recycle_due(self, slot: _Slot, incarnation: int) -> None:
        """Its grace is over: SIGTERM; after TERM_GRACE more, SIGKILL."""
        process, timer = slot.process, self._recycle_timers.get(slot.index)
        if slot.incarnation != incarnation or process is None or timer is None:
            return
        if slot.terminated:
            process.kill()
            return
        slot.terminated = True
        process.terminate()
        timer.schedule(time.monotonic() + TERM_GRACE)

    def _end_recycle(self, slot: _Slot) -> None:
        timer = self._recycle_timers.pop(slot.index, None)
        if timer is not None:
            timer.cancel()
        slot.recycling, slot.terminated = "", False

    def _stop_all(self, timeout: float, kill: bool = True) -> list[str]:
        """Drain, wait until ``timeout``, SIGTERM, wait TERM_GRACE, SIGKILL. Idempotent.

        Once ``hurry`` is set, no wait goes on: the stragglers are SIGKILLed at once.
        Only the watcher threads reap (``join``): two threads in ``waitpid`` on one
        child race, and the loser sees no exit code. Here we wait on sentinels.
        """
        self._stopping = True
        self._delayed.close()  # restarts still waiting out their backoff never happen
        for slot in self.slots:
            self._end_recycle(slot)
        live = [(s.worker_id, s.process) for s in self.slots if s.process is not None]
        live = [(worker_id, p) for worker_id, p in live if not _ended(p, 0)]
        for worker_id, _ in live:
            self.node.push(worker_id, Drain(timeout), wait=min(timeout, DRAIN_PUSH_WAIT))
        self._await([p for _, p in live], time.monotonic() + timeout)
        if not kill:
            return []
        forced = [(worker_id, p) for worker_id, p in live if not _ended(p, 0)]
        if not self.hurry.is_set():
            for _, process in forced:
                process.terminate()
            self._await([p for _, p in forced], time.monotonic() + TERM_GRACE)
        for _, process in forced:
            if not _ended(process, 0):
                process.kill()
                _ended(process, 5.0)
        for watcher in self._watchers:
            if watcher is not threading.current_thread():
                watcher.join(5)  # it reaps its process
        for worker_id, process in forced:
            self.events.emit("killed", worker_id, f"exit code {process.exitcode}")
        for slot in self.slots:
            if slot.process is not None:
                self.node.disconnect(slot.worker_id)
                with contextlib.suppress(ValueError):  # only if it would not die at all
                    slot.process.close()
                slot.process = None
        return [worker_id for worker_id, _ in forced]

    def _await(self, processes: list[BaseProcess], deadline: float) -> None:
        """Wait until they have all exited, the deadline passes, or ``hurry`` is set."""
        while not self.hurry.is_set():
            left = [p.sentinel for p in processes if not _ended(p, 0)]
            now = time.monotonic()
            if not left or now >= deadline:
                return
            mp_wait(left, min(SLICE, deadline - now))


def _ended(process: BaseProcess, timeout: float) -> bool:
    """Whether the process has exited, waiting up to ``timeout`` (without reaping it)."""
    return bool(mp_wait([process.sentinel], max(0.0, timeout)))


def _last_line(traceback: str, limit: int = 200) -> str:
    """The exception line that ends a traceback (``ValueError: boom``), cut to ``limit``."""
    lines = [line for line in traceback.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return last if len(last) <= limit else last[: limit - 3] + "..."


def _failed(path: str, exc: BaseException | None) -> WorkersFailed:
    if isinstance(exc, WorkersFailed):
        return exc
    error = WorkersFailed(f"{path}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
