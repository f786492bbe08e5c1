"""The memory actor in this process: real sampling (psutil), real threads, its messages,
its lineage across a crash, and decisions carried out after its turn."""

from __future__ import annotations

import os
import threading
from typing import Any

import psutil
import pytest

import lessor
from lessor import MemorySpec, Runtime
from lessor.actors.memory import MemoryActor
from lessor.core.memory_decisions import RUNTIME
from lessor.errors import LessorError
from lessor.handles.actor_route import ActorRoute
from lessor.handles.memory import MemoryManager
from lessor.protocol.messages import Admission, Cleanup, MemoryStats, decode, encode
from lessor.runtime.memory import MemoryTarget
from lessor.specs.memory import Thresholds
from tests.support.actors import crash_actor
from tests.support.helpers import wait_until


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _at_cleanup_level() -> MemorySpec:
    """This process sits between cleanup (0.7) and pause (0.8) of its limit."""
    return MemorySpec(max_memory=int(_rss() / 0.75), interval=0.02, machine=None)


def test_memory_messages_have_stable_tags_and_round_trip() -> None:
    assert (Admission.TAG, Cleanup.TAG, MemoryStats.TAG) == (29, 30, 31)
    for msg in (Admission("worker:w.0.1:12", True, "RSS 90%"), Cleanup("RSS 72%")):
        assert decode(encode(msg)) == msg
    with pytest.raises(TypeError, match=r"Admission\.paused"):
        Admission("", "yes")  # type: ignore[arg-type]


def test_stats_show_this_process_and_the_machine_and_travel_on_the_wire() -> None:
    with Runtime(handle_signals=False) as runtime:
        memory = runtime.add_memory(MemorySpec(interval=0.02))
        assert wait_until(lambda: memory.stats().samples >= 3, timeout=10)
        stats = memory.stats()
    (me,) = [p for p in stats.processes if p["key"] == RUNTIME]
    assert me["pid"] == os.getpid() and me["holder"] == ""
    assert 0 < me["rss"] <= me["peak"]
    assert me["limit"] is None and me["level"] == "ok"  # no max_memory: no limit of its own
    machine = stats.machine
    assert machine["cpus"] >= 1 and machine["total"] >= machine["available"] > 0
    assert 0 < machine["used"] <= machine["limit"]
    assert stats.sample_us_mean > 0
    assert decode(encode(stats)) == stats
    with Runtime(handle_signals=False) as bare, pytest.raises(LessorError, match="no memory"):
        bare.memory()


def test_a_second_memory_manager_is_refused() -> None:
    with Runtime(handle_signals=False) as runtime:
        runtime.add_memory(MemorySpec(interval=0.05))
        with pytest.raises(ValueError, match="memory manager already"):
            runtime.add_memory(MemorySpec(interval=0.05))


def test_the_runtime_runs_its_cleanup_handlers_on_a_thread_of_its_own() -> None:
    ran: list[tuple[int, str]] = []
    done = threading.Event()

    def handler() -> None:
        ran.append((os.getpid(), threading.current_thread().name))
        done.set()

    lessor.register_cleanup("test-runtime", handler)
    try:
        with Runtime(handle_signals=False) as runtime:
            memory = runtime.add_memory(_at_cleanup_level())
            assert done.wait(10), "the runtime's cleanup handler never ran"
            stats = memory.stats()
    finally:
        assert lessor.unregister_cleanup("test-runtime")
    pid, thread = ran[0]
    assert pid == os.getpid()
    assert thread != threading.main_thread().name
    assert stats.cleanups >= 1 and stats.pauses == 0  # the runtime is never paused
    kinds = [e[1] for e in stats.events]
    assert "memory_cleanup" in kinds and "memory_pause" not in kinds


def test_a_crashed_memory_actor_comes_back_with_what_it_knew() -> None:
    with Runtime(handle_signals=False) as runtime:
        memory = runtime.add_memory(_at_cleanup_level())
        assert wait_until(lambda: memory.stats().cleanups >= 1, timeout=10)
        before = memory.stats()
        target = runtime._memory.target  # type: ignore[union-attr]
        assert isinstance(target, MemoryTarget)
        crash_actor(target, timeout=10)
        assert wait_until(lambda: memory.stats().samples > before.samples, timeout=10)
        after = memory.stats()
        restarted = [e for e in runtime.events() if e.kind == "restarted"]
    assert after.samples > before.samples  # counted on, not from zero
    assert after.cleanups == before.cleanups  # still at cleanup: it did not run them again
    assert any(e.node == "root/memory" for e in restarted)


class _Sources:
    """Real readings of this process; each action checks it runs outside the turn by
    asking the actor for its stats (which would wait for ever inside a turn)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.route: ActorRoute | None = None
        self.fail_first = fail_first
        self.calls = 0
        self.actions: list[tuple[str, bool]] = []
        self.acted = threading.Event()

    def watched(self) -> dict[str, tuple[int, str]]:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise OSError("psutil could not read /proc")
        return {RUNTIME: (os.getpid(), ""), "me-as-worker": (os.getpid(), "worker:me:1")}

    def _act(self, what: str) -> None:
        assert self.route is not None
        try:
            MemoryManager(self.route).stats(timeout=2)
            outside = True
        except LessorError:
            outside = False
        self.actions.append((what, outside))
        self.acted.set()

    def admission(self, key: str, holder: str, paused: bool, why: str) -> None:
        self._act(f"admission {key} {paused}")

    def cleanup(self, key: str, why: str) -> None:
        self._act(f"cleanup {key}")

    def recycle(self, key: str, why: str) -> None:
        self._act(f"recycle {key}")

    def cpus(self) -> int:
        return 1


def _start(sources: _Sources, spec: MemorySpec) -> Any:
    ref = MemoryActor.start(spec, sources=sources)
    sources.route = ActorRoute(ref, "memory")
    return ref


def test_decisions_are_carried_out_after_the_turn() -> None:
    # This process, watched twice, sits past restart of a limit set below it.
    spec = MemorySpec(max_memory=_rss() // 2, interval=0.02, machine=None)
    sources = _Sources()
    ref = _start(sources, spec)
    try:
        assert wait_until(lambda: len(sources.actions) >= 4, timeout=10)
    finally:
        ref.stop()
    done = {what for what, _ in sources.actions}
    assert {"cleanup runtime", "cleanup me-as-worker", "admission me-as-worker True",
            "recycle me-as-worker"} <= done  # fmt: skip
    assert all(outside for _, outside in sources.actions), sources.actions
    assert not any(what.startswith(("recycle runtime", "admission runtime")) for what in done)


def test_a_failed_sample_stops_nothing() -> None:
    sources = _Sources(fail_first=3)
    ref = _start(sources, MemorySpec(interval=0.02, machine=None))
    try:
        assert sources.route is not None
        manager = MemoryManager(sources.route)
        assert wait_until(lambda: manager.stats().samples >= 2, timeout=10)
    finally:
        ref.stop()
    assert sources.calls >= 5


def test_thresholds_can_switch_a_level_off() -> None:
    spec = MemorySpec(max_memory=_rss() // 2, interval=0.02, machine=None,
                      thresholds=Thresholds(pause=None, restart=None))  # fmt: skip
    sources = _Sources()
    ref = _start(sources, spec)
    try:
        assert sources.acted.wait(10)
        assert sources.route is not None
        manager = MemoryManager(sources.route)
        assert wait_until(lambda: manager.stats().samples >= 5, timeout=10)
    finally:
        ref.stop()
    done = {what for what, _ in sources.actions}
    assert "cleanup me-as-worker" in done
    assert not any(what.startswith(("recycle", "admission")) for what in done)
