"""The demo's faults: each injected at a point of the job's progress, each watched
until the mechanism it shows has acted, and written down for the report.

- **kill**: SIGKILL a worker that holds leases; the time until the runtime reclaimed
  them ("holder died") is measured from the kill.
- **http burst**: the service fails every request until the breaker opens; then it
  recovers, and the time until the breaker closes again is measured.
- **leak**: one worker starts leaking memory; the memory manager pauses it, then
  recycles it (a new process takes its slot).
- **restart db**: PostgreSQL crashes and starts again; pools and the batcher retry.

The scene runs on its own thread and only reads the runtime (``status()``,
``events()``) between its actions; ``stop()`` ends it at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lessor.errors import LessorError
from lessor.runtime.runtime import Runtime
from lessor.runtime.status import holder_process

__all__ = ["Fault", "Scene"]

log = logging.getLogger("lessor.demo")

#: How often the scene looks at the runtime while it waits for an effect (seconds).
LOOK = 0.002
#: How long the scene waits for an effect before it writes it down as not seen.
EFFECT_DEADLINE = 30.0


@dataclass
class Fault:
    """One fault: what was done, when (seconds into the run), and what was seen."""

    kind: str
    at_s: float
    detail: str = ""
    seen: bool = False
    figures: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "at_s": round(self.at_s, 3), "detail": self.detail,
                "seen": self.seen, "figures": self.figures}  # fmt: skip


class Scene:
    """Runs ``steps`` ([(fraction of the items done, fault kind)]) as the job goes."""

    def __init__(
        self,
        runtime: Runtime,
        steps: list[tuple[float, str]],
        *,
        service: Any,
        database: Any,
        directory: str,
        base_failure_rate: float,
        done: Callable[[], float],
    ) -> None:
        self.runtime = runtime
        self.steps = sorted(steps)
        self.service = service
        self.database = database
        self.directory = directory
        self.base_failure_rate = base_failure_rate
        self.done = done
        self.faults: list[Fault] = []
        self.began = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lessor-demo-scene", daemon=True)

    def __enter__(self) -> Scene:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(EFFECT_DEADLINE)
        self.service.failure_rate = self.base_failure_rate

    def _run(self) -> None:
        actions = {"kill": self._kill, "http_burst": self._burst, "leak": self._leak,
                   "restart_db": self._restart_db}  # fmt: skip
        for fraction, kind in self.steps:
            while self.done() < fraction:
                if self._stop.wait(0.05):
                    return
            fault = Fault(kind, time.monotonic() - self.began)
            self.faults.append(fault)
            try:
                actions[kind](fault)
            except (LessorError, OSError) as exc:  # the job ended under it
                fault.detail += f" (stopped: {exc})"
            log.info("fault %s: %s", kind, fault.detail)

    def _wait(self, seen: Callable[[], bool], deadline: float = EFFECT_DEADLINE) -> bool:
        end = time.monotonic() + deadline
        while not seen():
            if self._stop.wait(LOOK) or time.monotonic() > end:
                return False
        return True

    # -- the faults ----------------------------------------------------------------------

    def _kill(self, fault: Fault) -> None:
        victim = self._holder_of_leases()
        if victim is None:
            fault.detail = "no worker held a lease"
            return
        worker_id, pid, held = victim
        since, killed_at = time.time(), time.monotonic()
        os.kill(pid, signal.SIGKILL)
        fault.detail = f"SIGKILLed {worker_id} (pid {pid}) holding {held} lease{'s' * (held > 1)}"

        def reclaimed() -> bool:
            return any(e.kind == "lease_reclaimed" and worker_id in e.detail
                       for e in self.runtime.events() if e.at >= since)  # fmt: skip

        fault.seen = self._wait(reclaimed, 5.0)
        if fault.seen:
            fault.figures["reclaim_ms"] = round((time.monotonic() - killed_at) * 1000, 2)
            fault.detail += f"; its leases came back in {fault.figures['reclaim_ms']:.1f} ms"

    def _holder_of_leases(self) -> tuple[str, int, int] | None:
        """A running worker that holds leases now: the tokens of a process-scoped pool."""
        status = self.runtime.status()
        running = {w["id"]: w["pid"] for w in status.workers if w["running"] and w["pid"]}
        for pool in status.pools.values():
            for holder, count in pool["stats"]["holders"].items():
                worker_id = holder_process(holder)
                if worker_id in running:
                    return worker_id, running[worker_id], count
        return None

    def _breaker_state(self) -> str:
        return str(self.runtime.breaker("api").state)  # pushed to the handle: no round trip

    def _burst(self, fault: Fault) -> None:
        began = time.monotonic()
        self.service.failure_rate = 1.0
        fault.detail = "the HTTP service fails every request"
        opened = self._wait(lambda: self._breaker_state() == "open")
        self.service.failure_rate = self.base_failure_rate
        if not opened:
            fault.detail += "; the breaker did not open"
            return
        fault.figures["trip_ms"] = round((time.monotonic() - began) * 1000, 1)
        recovered = time.monotonic()
        fault.seen = self._wait(lambda: self._breaker_state() == "closed")
        fault.figures["closed_again_s"] = round(time.monotonic() - recovered, 2)
        fault.detail += (f"; the breaker opened after {fault.figures['trip_ms']:.0f} ms for "
                         f"every process, and closed {fault.figures['closed_again_s']:.1f} s "
                         "after the service recovered")  # fmt: skip

    def _leak(self, fault: Fault) -> None:
        since, began = time.time(), time.monotonic()
        with open(os.path.join(self.directory, "leak-armed"), "w"):
            pass  # the next worker to start a batch takes it (see job.maybe_leak)
        fault.detail = "a worker leaks memory"

        def recycled() -> bool:
            return any(e.kind == "recycled" for e in self.runtime.events() if e.at >= since)

        fault.seen = self._wait(recycled, 60.0)
        if fault.seen:
            kinds = [e.kind for e in self.runtime.events() if e.at >= since]
            fault.figures["recycled_after_s"] = round(time.monotonic() - began, 2)
            paused = "paused and " if "memory_pause" in kinds else ""
            after = fault.figures["recycled_after_s"]
            fault.detail += f"; the memory manager {paused}recycled it after {after:.1f} s"
        with contextlib.suppress(OSError):  # not taken (the job ended first)
            os.unlink(os.path.join(self.directory, "leak-armed"))

    def _restart_db(self, fault: Fault) -> None:
        began = time.monotonic()
        self.database.restart()
        fault.figures["restart_s"] = round(time.monotonic() - began, 2)
        fault.seen = True
        fault.detail = (f"PostgreSQL crashed and was back in {fault.figures['restart_s']:.1f} s; "
                        "broken connections were discarded and their work retried")  # fmt: skip
