"""The memory manager with real worker processes that really allocate memory.

A job runner must never be OOM-killed: lessor samples the RSS of the runtime and of
every worker, warns, runs cleanup handlers where they were registered, pauses a
worker's admission to pools, and recycles a worker past its limit once it has
finished its item and its leases are back, the work it had not done going to a fresh
process. These tests judge that by what the pools, the workers and the memory
manager's stats and events say, with tests/workers/memory_targets.py as the workers.

Every spec here sets ``machine=None``: other tests share this machine, and its memory
in use must not move these processes' levels. Levels are fractions of ``max_memory``,
so each test sets the limit (or the worker's allocation) from what the process uses.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest

import lessor
from lessor import (
    LessorError,
    MemoryManager,
    MemorySpec,
    PoolHandle,
    PoolSpec,
    Runtime,
    TaskFailed,
    Thresholds,
    TokenFactory,
)
from lessor.protocol.messages import MemoryStats
from lessor.resources import ProcessSampler
from lessor.supervisor.events import Event
from tests.workers import memory_targets

MB = 1_000_000  # as the memory manager counts
START_BOUND = 30.0  # seconds for a spawned worker to be up (spawn imports everything)
BOUND = 10.0  # seconds for anything the memory manager does (it samples every 50 ms)
POLL = 0.02  # seconds between looks at a condition

ctx = multiprocessing.get_context("spawn")


def spec(**overrides: Any) -> MemorySpec:
    """A memory manager that samples every 50 ms and ignores the machine's memory."""
    settings: dict[str, Any] = {"interval": 0.05, "machine": None, "uss_interval": None}
    return MemorySpec(**(settings | overrides))


def runtime() -> Runtime:
    return Runtime(handle_signals=False, shutdown_timeout=5.0)


def wait_for(predicate: Callable[[], object], timeout: float = BOUND) -> bool:
    """Poll ``predicate`` every 20 ms until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def events(rt: Runtime, kind: str, node: str | None = None) -> list[Event]:
    return [e for e in rt.events() if e.kind == kind and (node is None or e.node == node)]


def process(stats: MemoryStats, key: str) -> dict[str, Any] | None:
    """The stats' entry for process ``key`` (a worker id, or "runtime"), if listed."""
    return next((p for p in stats.processes if p["key"] == key), None)


def listed(stats: MemoryStats, key: str) -> dict[str, Any]:
    """The stats' entry for process ``key``, which must be listed."""
    entry = process(stats, key)
    assert entry is not None, (key, [p["key"] for p in stats.processes])
    return entry


def collect(
    q: Any, *wanted: Callable[[tuple[Any, ...]], bool], timeout: float = BOUND
) -> list[tuple[Any, ...]]:
    """Messages from ``q`` until each of ``wanted`` has accepted one (in any order)."""
    deadline = time.monotonic() + timeout
    got: list[tuple[Any, ...]] = []
    while not all(any(map(want, got)) for want in wanted):
        got.append(tuple(q.get(timeout=max(deadline - time.monotonic(), 0.01))))
    return got


def drain_queue(q: Any) -> list[Any]:
    """Everything on ``q`` now (never blocks)."""
    got = []
    while True:
        try:
            got.append(q.get_nowait())
        except queue.Empty:
            return got


def expect(q: Any, what: str, timeout: float = BOUND) -> tuple[Any, ...]:
    """The next message on ``q``, which must be a ``what``."""
    message = q.get(timeout=timeout)
    assert message[0] == what, message
    return tuple(message)


class PeakLeased:
    """Polls a pool's stats on a thread: the most it ever had leased, and its largest size."""

    def __init__(self, pool: PoolHandle) -> None:
        self.pool = pool
        self.leased = self.size = self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-leased")

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            stats = self.pool.stats()
            self.leased = max(self.leased, stats.leased)
            self.size = max(self.size, stats.size)
            self.polls += 1

    @contextmanager
    def watching(self) -> Iterator[PeakLeased]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)


# -- 1. a leaking map: workers recycled, leases back, every item done ---------------------

LEAK = 70 * MB  # per item: from ~30 MB, one item is below pause (120 MB), two past restart
LIMIT_1 = 150 * MB
ITEMS = 8
WORK = 0.5  # seconds an item "works" after leaking: the memory manager sees it meanwhile


def test_a_leaking_map_recycles_its_workers_and_every_item_is_done() -> None:
    """Each item keeps a lease for good and leaks 70 MB: a worker passes its 150 MB limit
    at its second item, holding two of the pool's four leases. It is recycled: it ends
    that item, exits (its leases come back), and a fresh process takes its slot. Every
    result arrives, from more processes than there were workers, and the pool never has
    more than its four leased."""
    with runtime() as rt:
        slots = rt.add_pool(
            PoolSpec("slots", TokenFactory(range(4)), max_size=4, acquire_timeout=10.0)
        )
        memory = rt.add_memory(spec(max_memory=LIMIT_1, recycle_grace=2.0))
        items = [[i, "slots", LEAK, WORK] for i in range(ITEMS)]
        began = time.monotonic()
        with PeakLeased(slots).watching() as peak:
            # max_restarts=0: a single restart counted against the group would end it.
            results = rt.map(
                memory_targets.leak_and_keep, items, workers=2, timeout=60, max_restarts=0
            )
        took = time.monotonic() - began

        assert [r[:2] for r in results] == [[i, i * i] for i in range(ITEMS)]
        assert {r[3] for r in results} <= set(range(4))
        pids = {r[2] for r in results}
        assert len(pids) > 2, pids  # recycled workers were replaced by fresh processes

        stats = memory.stats()
        assert stats.recycles >= 1 and stats.recycled, stats.recycled
        why_of: dict[str, str] = {key: why for key, why in stats.recycled}
        for key, why in why_of.items():
            assert re.fullmatch(r"RSS \d+ MB is \d+% of its 150 MB limit", why), why
            assert [e.detail for e in events(rt, "recycling", key)] == [why]
        # A worker recycled before the map ended exited (status 0) and was replaced; one
        # still draining when it ended was stopped with the map's workers instead.
        recycled = events(rt, "recycled")
        assert recycled, stats.recycled
        for event in recycled:
            assert event.detail == f"{why_of[event.node]}; exit code 0", event
        # Recycling is not failing: no worker failed, none was restarted as a failure.
        assert not [e for e in rt.events() if e.kind in ("failed", "gave_up")]

        # The leases the recycled workers kept came back; the pool never lent more than 4.
        assert wait_for(lambda: slots.stats().leased == 0), slots.stats()
        assert peak.polls > 0 and 2 <= peak.leased <= 4 and peak.size <= 4, vars(peak)
        assert slots.stats().reclaimed >= 2 * len(stats.recycled)
    assert took < 30, took


def test_a_map_worker_paused_by_its_leak_has_its_items_done_all_the_same() -> None:
    """The issue's own case: items leak 20 MB each and need a lease, limit 200 MB. The
    pause band (160-190 MB) is wider than one item's leak, so the worker lands in it
    whatever its start-up RSS, and stays there: it leaks no more while its Acquire is
    held. After ``max_pause`` it is recycled, and the held item runs on its successor."""
    with runtime() as rt:
        slots = rt.add_pool(
            PoolSpec("slots", TokenFactory(range(16)), max_size=16, acquire_timeout=20.0)
        )
        memory = rt.add_memory(spec(max_memory=200 * MB, recycle_grace=1.0, max_pause=0.5))
        items = [[i, "slots", 20 * MB, 0.05] for i in range(10)]
        results = rt.map(
            memory_targets.leak_and_keep, items, workers=1, timeout=30, return_exceptions=True
        )
        stats = memory.stats()
        assert stats.pauses >= 1  # it did reach pause
        assert any(why.startswith("paused") for _, why in stats.recycled), stats.recycled
        failed = [str(r) for r in results if isinstance(r, TaskFailed)]
        assert failed == [], failed
        assert [r[:2] for r in results] == [[i, i * i] for i in range(10)]
        assert wait_for(lambda: slots.stats().leased == 0), slots.stats()


# -- 2. a slow leak is flagged by its slope ----------------------------------------------

GB = 1000 * MB


def test_a_slow_leak_is_flagged_by_its_slope_before_any_threshold() -> None:
    """A worker growing 3 MB every 100 ms (far below its 2 GB limit) is flagged as
    leaking by the slope over a 2 s window, at level ok all along; the flag clears once
    it stays flat. A control worker that allocated once and stays flat is not flagged.

    Both are spawned before the memory manager starts, so what it watches of the
    control is flat from its first sample (a process's start-up is growth too)."""
    out, go, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    with runtime() as rt:
        try:
            rt.spawn_workers(
                memory_targets.slow_leak, 1, (3 * MB, 30, 0.1, go, stop, out), name="leaker"
            )
            rt.spawn_workers(memory_targets.flat, 1, (60 * MB, stop, out), name="control")
            ready = [expect(out, "ready", START_BOUND) for _ in range(2)]
            leaker = next(m[1] for m in ready if "leaker" in m[1])
            control = next(m[1] for m in ready if "control" in m[1])
            memory = rt.add_memory(spec(max_memory=2 * GB, leak_mb_per_min=20.0, leak_window=2.0))
            go.set()

            assert wait_for(lambda: events(rt, "memory_leak", leaker)), memory.stats().events
            flagged = events(rt, "memory_leak", leaker)[0]
            rate = re.fullmatch(r"growing (-?[\d.]+) MB/min", flagged.detail)
            assert rate is not None and float(rate[1]) >= 20.0, flagged
            at_flag = listed(memory.stats(), leaker)
            assert at_flag["leaking"] and at_flag["level"] == "ok", at_flag

            grown = expect(out, "grown", BOUND)
            assert grown[3] < 0.2 * 2 * GB  # it never came near a threshold
            # Flat again: after a window of flat samples its slope falls, and so does the flag.
            assert wait_for(lambda: events(rt, "memory_leak_over", leaker)), memory.stats().events
            stats = memory.stats()
            assert not events(rt, "memory_level", leaker)  # its level never left ok
            assert listed(stats, leaker)["level"] == "ok"

            # The control was watched as long and judged all along: never flagged.
            mine = listed(stats, control)
            assert mine["rss"] >= 60 * MB and mine["level"] == "ok", mine
            assert mine["slope_mb_per_min"] is not None and not mine["leaking"], mine
            assert abs(mine["slope_mb_per_min"]) < 10.0, mine
            flagged_workers = {e.node for e in events(rt, "memory_leak")} - {"runtime"}
            assert flagged_workers == {leaker}, flagged_workers
        finally:
            go.set()
            stop.set()


# -- 3. cleanup handlers run in the process that registered them ------------------------


def test_cleanup_handlers_run_in_the_process_that_registered_them() -> None:
    """A worker past cleanup (below pause) runs its own handler, in its own process,
    which sheds its cache; the runtime's handler stays put until the runtime's own
    process crosses cleanup, and then runs here, on a thread of the runtime's."""
    me = psutil.Process()
    limit = int(me.memory_info().rss / 0.45)  # this process at 45%: below warn
    ran: list[tuple[int, str]] = []
    runtime_ran = threading.Event()

    def runtime_cache() -> None:
        ran.append((os.getpid(), threading.current_thread().name))
        runtime_ran.set()

    out, stop = ctx.Queue(), ctx.Event()
    lessor.register_cleanup("runtime-cache", runtime_cache)
    blob = b""
    try:
        with runtime() as rt:
            try:
                # cleanup_interval: handlers run again every 0.5 s while at cleanup.
                memory = rt.add_memory(spec(max_memory=limit, cleanup_interval=0.5))
                rt.spawn_workers(memory_targets.cleanup_reporter, 1, (0.75, limit, out, stop))
                # Its handler may run before "grown" is said, and (mid-allocation) before
                # the cache holds anything: wait for the run that dropped the cache.
                got = collect(
                    out,
                    lambda m: m[0] == "grown",
                    lambda m: m[0] == "cleanup" and m[3] == 1,
                    timeout=START_BOUND,
                )
                (_, key, pid, grown_rss), *_ = [m for m in got if m[0] == "grown"]
                assert 0.70 * limit <= grown_rss < 0.80 * limit, (grown_rss, limit)
                cleanups = [m[1:3] for m in got if m[0] == "cleanup"]
                assert cleanups and set(cleanups) == {(pid, "lessor-cleanup")}, got
                assert pid != os.getpid()
                assert events(rt, "memory_cleanup", key)
                # It shed its cache: the worker's RSS fell back, below warn.
                assert wait_for(
                    lambda: (
                        (p := process(memory.stats(), key)) is not None
                        and p["rss"] < 0.60 * limit
                        and p["level"] == "ok"
                    )
                ), process(memory.stats(), key)
                # Meanwhile the runtime's own handler did not run: its process is below.
                stats = memory.stats()
                assert listed(stats, "runtime")["level"] in ("ok", "warn")
                assert not ran and not events(rt, "memory_cleanup", "runtime")
                assert not [
                    e for e in stats.events if e[1] == "memory_cleanup" and e[2] == "runtime"
                ]

                # Now the runtime's process crosses cleanup: its handler runs, here.
                blob = memory_targets.grow_to(0.76, limit)
                assert runtime_ran.wait(BOUND), process(memory.stats(), "runtime")
                # (Here, on a factory thread: not the main thread, nor a worker.)
                assert all(p == os.getpid() and t.startswith("lessor-factory") for p, t in ran)
                assert events(rt, "memory_cleanup", "runtime")
                # The worker's handler did not run for the runtime's memory.
                assert drain_queue(out) == []
            finally:
                stop.set()
    finally:
        lessor.unregister_cleanup("runtime-cache")
        del blob


# -- 4. pause: a paused worker's Acquires wait; admission resumes when memory falls -----

LIMIT_4 = 300 * MB


def test_a_paused_worker_waits_for_leases_until_its_memory_falls() -> None:
    """Worker A passes pause (below restart): its Acquires, through the cached handle
    (which had a lease parked) and an uncached one, queue in the pool although it has
    room, while worker B borrows and returns at once. A frees its memory: admission
    resumes and both of A's Acquires are granted."""
    a_out, b_out = ctx.Queue(), ctx.Queue()
    free, go, stop = ctx.Event(), ctx.Event(), ctx.Event()
    with runtime() as rt:
        try:
            slots = rt.add_pool(PoolSpec("slots", TokenFactory(range(3)), max_size=3))
            memory = rt.add_memory(spec(max_memory=LIMIT_4))
            rt.spawn_workers(
                memory_targets.prompt_borrower, 1, ("slots", go, b_out, stop), name="b"
            )
            a_group = rt.spawn_workers(
                memory_targets.paused_acquirer, 1, ("slots", 0.87, LIMIT_4, a_out, free), name="a"
            )
            assert expect(a_out, "parked", START_BOUND) == ("parked", 1)
            _, key, _pid, grown_rss = expect(a_out, "grown")
            assert 0.80 * LIMIT_4 <= grown_rss < 0.95 * LIMIT_4, grown_rss
            # A heard of its pause; its cached handle gave its parked lease back.
            assert expect(a_out, "heard") == ("heard", True, 0)
            entry = listed(memory.stats(), key)
            assert entry["paused"] and entry["level"] == "pause", entry
            assert entry["holder"] in memory.stats().paused
            assert events(rt, "memory_pause", key)

            # Both of A's Acquires wait in the pool, though it has room for both.
            assert wait_for(lambda: slots.stats().waiting >= 2), slots.stats()
            pool = slots.stats()
            assert pool.idle + (3 - pool.size) >= 2, pool

            # B is not paused: it borrows and gives back meanwhile.
            _, b_key, _, _ = expect(b_out, "ready", START_BOUND)
            go.set()
            _, got, _ = expect(b_out, "borrowed")
            assert len(got) == 2
            assert slots.stats().waiting >= 2
            with pytest.raises(queue.Empty):  # and A still has nothing
                a_out.get(timeout=0.2)
            assert not listed(memory.stats(), b_key)["paused"]

            # A frees its memory: admission resumes, and its Acquires are served.
            served_once_freed(rt, memory, key, a_out, free)
            assert rt.join(a_group, BOUND)  # it exited well: it was never refused, only held
            assert wait_for(lambda: slots.stats().leased == 0), slots.stats()
            assert slots.stats().timeouts == 0
            assert not events(rt, "failed")
        finally:
            free.set()
            go.set()
            stop.set()


def served_once_freed(rt: Runtime, memory: MemoryManager, key: str, a_out: Any, free: Any) -> None:
    """Let worker ``key`` free its memory: it is resumed, then both its Acquires granted."""
    freed_at = time.monotonic()
    free.set()
    messages = [a_out.get(timeout=BOUND) for _ in range(3)]
    assert sorted(m[0] for m in messages) == ["freed", "granted", "granted"], messages
    granted = [m for m in messages if m[0] == "granted"]
    assert sorted(m[1] for m in granted) == ["cached", "uncached"]
    assert all(m[3] >= freed_at for m in granted), (freed_at, granted)
    resumed = events(rt, "memory_resume", key)
    assert resumed, memory.stats().events
    assert resumed[0].at >= events(rt, "memory_pause", key)[0].at
    assert resumed[0].detail.startswith("RSS "), resumed  # its memory fell: not "gone"
    stats = memory.stats()
    assert not listed(stats, key)["paused"] and stats.paused == []
    assert (stats.pauses, stats.resumes) >= (1, 1)
    expect(a_out, "done")


# -- 5. a paused worker SIGKILLed: pause lifted, leases reclaimed -------------------------


def test_a_paused_worker_that_is_killed_has_its_pause_lifted_and_its_leases_back() -> None:
    """A worker paused while holding two leases is SIGKILLed: the memory manager forgets
    it and lifts its pause ("gone"), and the pool takes both leases back."""
    out = ctx.Queue()
    with runtime() as rt:
        slots = rt.add_pool(PoolSpec("slots", TokenFactory(range(3)), max_size=3))
        memory = rt.add_memory(spec(max_memory=LIMIT_4))
        rt.spawn_workers(
            memory_targets.hold_and_bloat, 1, ("slots", 2, 0.87, LIMIT_4, out), "temporary"
        )
        _, key, pid, _rss, lease_ids = expect(out, "ready", START_BOUND)
        assert len(lease_ids) == 2
        assert wait_for(lambda: (p := process(memory.stats(), key)) is not None and p["paused"])
        holder = listed(memory.stats(), key)["holder"]
        assert memory.stats().paused == [holder]
        assert slots.stats().leased == 2

        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: (s := memory.stats()).paused == [] and process(s, key) is None), (
            memory.stats()
        )
        # Lifted once: as "gone", or (until its group reaps it) as memory that fell to
        # 0 MB: see test_a_dead_worker_not_yet_reaped_is_not_sampled_as_alive.
        resumed = events(rt, "memory_resume", key)
        assert len(resumed) == 1, resumed
        assert wait_for(lambda: slots.stats().leased == 0), slots.stats()
        assert (slots.stats().reclaimed, slots.stats().waiting) == (2, 0)
        reclaimed = {e.detail.split(" ")[0] for e in events(rt, "lease_reclaimed", "slots")}
        assert reclaimed == set(lease_ids), (reclaimed, lease_ids)


def test_a_dead_worker_not_yet_reaped_is_not_sampled_as_alive() -> None:
    """The sampler's own promise: "one sample per process still alive". A real child
    that has exited, not yet waited for, is what a SIGKILLed worker is until its group
    reaps it; its group may take a few samples' time to do so on a busy machine."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
        key = "root/workers-1.0.1"
        samples = ProcessSampler().processes({key: (child.pid, f"worker:{key}:{child.pid}")})
        # Today: [ProcessSample(key='root/workers-1.0.1', pid=..., rss=0, ...)].
        assert samples == [], samples
    finally:
        child.wait()


# -- 6. what add_memory and memory() refuse -----------------------------------------------


def test_add_memory_once_memory_after_it_and_specs_checked() -> None:
    """``memory()`` before ``add_memory`` is a LessorError; a second ``add_memory`` is a
    ValueError that leaves the first manager watching; bad specs name their field."""
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: Thresholds(pause=0.5, cleanup=0.7), "pause"),
        (lambda: Thresholds(warn=0.0), "warn"),
        (lambda: Thresholds(hysteresis=0.7), "hysteresis"),
        (lambda: MemorySpec(max_memory=-1), "max_memory"),
        (lambda: MemorySpec(max_memory=True), "max_memory"),
        (lambda: MemorySpec(memory_fraction=1.5), "memory_fraction"),
        (lambda: MemorySpec(interval=0.5, leak_window=1.0), "leak_window"),
        (lambda: MemorySpec(interval=0), "interval"),
        (lambda: MemorySpec(recycle_grace=float("inf")), "recycle_grace"),
    ]
    for bad, field in cases:
        with pytest.raises(ValueError, match=rf"^{field} "):
            bad()

    out, stop = ctx.Queue(), ctx.Event()
    with runtime() as rt:
        try:
            with pytest.raises(LessorError, match="add_memory"):
                rt.memory()
            first = rt.add_memory(spec(max_memory=LIMIT_4))
            with pytest.raises(ValueError, match="memory manager already"):
                rt.add_memory(spec())
            assert rt.memory() is first
            # The first one still watches: a worker spawned now is sampled, with its limit.
            rt.spawn_workers(memory_targets.flat, 1, (50 * MB, stop, out))
            _, key, pid, _ = expect(out, "ready", START_BOUND)
            assert wait_for(
                lambda: (p := process(first.stats(), key)) is not None and p["rss"] >= 50 * MB
            )
            entry = process(first.stats(), key)
            assert entry is not None and (entry["pid"], entry["limit"]) == (pid, LIMIT_4)
            assert len([c for c in rt.tree()["children"] if c["id"] == "memory"]) == 1
        finally:
            stop.set()


# -- 7. a worker asks for the memory manager's stats -------------------------------------


def test_a_worker_reads_the_memory_managers_stats() -> None:
    """``lessor.connect().memory().stats()`` in a worker is the runtime's MemoryStats,
    listing that worker (its pid, the 40 MB it allocated, its limit) as the runtime does."""
    out, stop = ctx.Queue(), ctx.Event()
    with runtime() as rt:
        try:
            memory = rt.add_memory(spec(max_memory=2 * GB))
            rt.spawn_workers(memory_targets.ask_stats, 1, (40 * MB, out, stop))
            message = expect(out, "stats", START_BOUND + 20)
            _, ok, module, name, is_stats, fields, key, pid, entry, keys = message
            assert ok, message
            assert (module, name, is_stats) == (MemoryStats.__module__, "MemoryStats", True)
            here = memory.stats()
            assert fields == sorted(here.as_dict())
            assert entry["pid"] == pid and entry["rss"] >= 40 * MB and entry["limit"] == 2 * GB
            assert entry["holder"] == f"worker:{key}:{pid}", entry
            assert "runtime" in keys and key in keys
            # The runtime's own view lists the same worker, by the same key, pid and holder.
            seen = listed(here, key)
            assert (seen["pid"], seen["holder"], seen["limit"]) == (pid, entry["holder"], 2 * GB)
            assert seen["rss"] >= 40 * MB
        finally:
            stop.set()
