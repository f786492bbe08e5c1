"""Chaos: worker processes borrow from one pool while the test kills, interrupts and fails them.

Throughout, a watchdog asks the pool for its stats every 100 ms: a pool that stops
answering (a deadlock) fails the run, with every thread's stack. Afterwards nothing
may have been held twice, no lease may be out, the pool must be whole, every
process reaped and the shutdown report clean.

The default run lasts ``SHORT_SECONDS``; ``-m slow`` runs the soak for
``LESSOR_CHAOS_SECONDS`` (default 300).
"""

from __future__ import annotations

import faulthandler
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from lessor import ChildRef, Factory, PoolHandle, PoolSpec, Runtime, TokenFactory
from lessor.supervisor.workers import StopWorkers
from tests.support.overlap import DuplicateTokens, Markers
from tests.workers import chaos_targets

SHORT_SECONDS = 10.0
SOAK_SECONDS = float(os.environ.get("LESSOR_CHAOS_SECONDS", "300"))
WORKERS, SLOTS = 5, 3
SIGNAL_EVERY = (0.1, 0.3)  # seconds between two signals, uniformly: ~200 ms on average
SIGINT_SHARE = 0.25  # the rest are SIGKILL
MEAN_LIFE = 4.0  # seconds a worker lives on average before it fails on purpose
STATS_EVERY, STATS_BOUND = 0.1, 2.0  # the watchdog's period and the longest answer allowed


class Watchdog(threading.Thread):
    """Asks the pool for stats every 100 ms; remembers the longest wait and bad snapshots."""

    def __init__(self, pool: PoolHandle) -> None:
        super().__init__(name="chaos-watchdog", daemon=True)
        self.pool = pool
        self.done = threading.Event()
        self.asked = 0
        self.longest = 0.0
        self.asking_since: float | None = None
        self.problems: list[str] = []

    def run(self) -> None:
        while not self.done.wait(STATS_EVERY):
            began = self.asking_since = time.monotonic()
            try:
                stats = self.pool.stats()
            except Exception as exc:
                self.problems.append(f"stats() raised {exc!r}")
                continue
            finally:
                took = time.monotonic() - began
                self.asking_since = None
                self.longest = max(self.longest, took)
                self.asked += 1
            whole = stats.idle + stats.checking + stats.leased == stats.size
            if not whole or stats.size + stats.creating > SLOTS:
                self.problems.append(f"inconsistent stats: {stats}")

    def stuck_for(self) -> float:
        since = self.asking_since
        return 0.0 if since is None else time.monotonic() - since

    def stop(self) -> None:
        self.done.set()
        self.join(5)  # a stats() stuck in a deadlocked pool is reported, not waited for


@dataclass
class Figures:
    seconds: float
    runs: int = 0  # worker processes started
    borrowed_in: int = 0  # ... of which got as far as borrowing (the others died starting)
    sigkills: int = 0
    sigints: int = 0
    pairs: int = 0
    overlaps: int = 0
    stale_markers: int = 0  # taken over from killed holders (judged, not overlaps)
    stats_asked: int = 0
    longest_stats_s: float = 0.0
    exits: dict[str, int] = field(default_factory=dict)  # exit code -> count
    problems: list[str] = field(default_factory=list)
    signals: list[tuple[int, str, float]] = field(default_factory=list)  # pid, name, when


def workers_of_this_process() -> list[psutil.Process]:
    """Live worker processes (spawned children), found without asking any actor."""
    found = []
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def dump_threads(why: str) -> str:
    with tempfile.TemporaryFile("w+") as out:
        faulthandler.dump_traceback(out, all_threads=True)
        out.seek(0)
        return f"{why}; every thread of the test process:\n{out.read()}"


def bounded(fn: Callable[[], Any], seconds: float, what: str, problems: list[str]) -> Any:
    """Run fn on a helper thread; a hang (or an error) is a problem, with the threads' stacks."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    helper = threading.Thread(target=call, name=what, daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        problems.append(dump_threads(f"{what} took over {seconds} s"))
    elif errors:
        problems.append(f"{what} raised {errors[0]!r}")
    return result[0] if result else None


def run_chaos(
    seconds: float, tmp_path: Path, seed: int, factory: Factory[Any] | None = None
) -> Figures:
    figures = Figures(seconds)
    markers, counts = Markers(tmp_path / "markers"), tmp_path / "counts"
    counts.mkdir()
    killed: dict[int, float] = {}  # pid -> monotonic time just before SIGKILL
    rt = Runtime(handle_signals=False, max_restarts=1000, max_seconds=1.0, events=1_000_000)
    watchdog: Watchdog | None = None
    try:
        pool = rt.add_pool(PoolSpec("slots", factory or TokenFactory(), max_size=SLOTS))
        group = rt.spawn_workers(
            chaos_targets.borrower, WORKERS,
            args=("slots", str(markers.dir), str(counts), MEAN_LIFE),
            restart="permanent", max_restarts=1000, max_seconds=1.0, name="chaos",
        )  # fmt: skip
        watchdog = Watchdog(pool)
        watchdog.start()
        signal_at_random(seconds, random.Random(seed), watchdog, killed, figures)
        if not figures.problems:
            stop_workers_and_look(group, pool, figures.problems)
        watchdog.stop()
    finally:
        if watchdog is not None:
            watchdog.done.set()
        report = bounded(lambda: rt.shutdown(timeout=5), 30, "shutdown", figures.problems)
    assert watchdog is not None
    if watchdog.stuck_for() > STATS_BOUND:
        figures.problems.append(f"stats() unanswered for {watchdog.stuck_for():.1f} s at the end")
    figures.problems += watchdog.problems
    figures.stats_asked, figures.longest_stats_s = watchdog.asked, round(watchdog.longest, 3)
    if watchdog.longest > STATS_BOUND:
        figures.problems.append(f"a stats() answer took {watchdog.longest:.3f} s")
    if report is not None and (not report.clean or report.reclaimed or report.killed):
        figures.problems.append(f"shutdown report not clean: {report}")
    judge_processes(rt, counts, figures)
    judge_markers(markers, killed, figures)
    return figures


def signal_at_random(
    seconds: float,
    rng: random.Random,
    watchdog: Watchdog,
    killed: dict[int, float],
    figures: Figures,
) -> None:
    """Every ~200 ms SIGKILL (or, now and then, SIGINT) a random live worker."""
    deadline = time.monotonic() + seconds
    pause = threading.Event()
    while time.monotonic() < deadline:
        stuck = watchdog.stuck_for()
        if stuck > STATS_BOUND or watchdog.longest > STATS_BOUND:
            figures.problems.append(dump_threads(f"stats() unanswered for {stuck:.1f} s"))
            return
        pause.wait(rng.uniform(*SIGNAL_EVERY))  # pacing the chaos, not synchronising
        live = workers_of_this_process()
        if not live:
            continue
        victim = rng.choice(live)
        sig = signal.SIGINT if rng.random() < SIGINT_SHARE else signal.SIGKILL
        when = time.monotonic()
        if sig == signal.SIGKILL:
            killed[victim.pid] = when
        figures.signals.append((victim.pid, sig.name, when))
        try:
            os.kill(victim.pid, sig)
        except ProcessLookupError:
            continue
        if sig == signal.SIGKILL:
            figures.sigkills += 1
        else:
            figures.sigints += 1


def stop_workers_and_look(group: ChildRef, pool: PoolHandle, problems: list[str]) -> None:
    """Stop the workers as a shutdown's drain would, but keep the pool to look at it."""
    forced = bounded(
        lambda: group.current(5).ask(StopWorkers(5.0), timeout=60), 90, "StopWorkers", problems
    )
    if forced:
        problems.append(f"workers that ignored Drain and were killed: {forced}")
    stats = bounded(pool.stats, 10, "stats() after the stop", problems)
    if stats is None:
        return
    if stats.leased or stats.waiting or stats.checking or stats.creating:
        problems.append(f"leases still out after the workers stopped: {stats}")
    if (stats.size, stats.idle, stats.created, stats.destroyed) != (SLOTS, SLOTS, SLOTS, 0):
        problems.append(f"the pool is not whole: {stats}")
    if stats.acquired != stats.released + stats.reclaimed:
        problems.append(f"grants unaccounted for: {stats}")


def judge_processes(rt: Runtime, counts: Path, figures: Figures) -> None:
    """Every worker reaped; every failure restarted; SIGKILLs seen as such."""
    problems = figures.problems
    pids = _pids(counts)
    figures.borrowed_in = len(pids)
    figures.pairs = sum(path.stat().st_size for path in counts.iterdir())
    left = workers_of_this_process()
    unreaped = [c.pid for c in psutil.Process().children(recursive=True) if c.pid in pids]
    if left or unreaped:
        problems.append(f"processes left behind: live {left}, not reaped {unreaped}")
    events = [e for e in rt.events() if e.node.startswith("root/chaos.")]  # the processes
    kinds = [e.kind for e in events]
    for event in events:
        if event.kind == "failed":
            code = event.detail.removeprefix("exit code ").split(":")[0]
            figures.exits[code] = figures.exits.get(code, 0) + 1
    failed, restarted, started = (kinds.count(k) for k in ("failed", "restarted", "started"))
    figures.runs = started
    if any(e.kind == "gave_up" for e in rt.events()):
        problems.append("the worker group gave up")
    if restarted != failed or started != WORKERS + restarted:
        problems.append(f"{failed} failures, {restarted} restarts, {started} starts")
    if not 0 < figures.exits.get("-9", 0) <= figures.sigkills:
        problems.append(f"{figures.sigkills} SIGKILLs sent, exits {figures.exits}")


def judge_markers(markers: Markers, killed: dict[int, float], figures: Figures) -> None:
    found = markers.overlaps(killed=killed)
    figures.overlaps = len(found)
    figures.stale_markers = markers.stale()
    if found:
        history: dict[int, list[str]] = {}
        for pid, name, when in figures.signals:
            history.setdefault(pid, []).append(f"{name} at {when:.6f}")
        owners = {int(line.split("\t")[3].split()[0]) for line in found if "\tfound\t" in line}
        figures.problems.append(
            f"{len(found)} overlaps, first: {found[:3]}; signals to the holders found there: "
            f"{ {pid: history.get(pid, []) for pid in sorted(owners)[:10]} }"
        )
    leftover = {int(owner.split()[0]) for owner in markers.owners().values()}
    if not leftover <= set(killed):
        figures.problems.append(f"markers left by holders nobody killed: {markers.owners()}")


def _pids(counts: Path) -> set[int]:
    return {int(path.name) for path in counts.iterdir()}


def check(figures: Figures, record_property: Callable[[str, object], None]) -> None:
    summary = {k: v for k, v in vars(figures).items() if k not in ("problems", "signals")}
    print(f"chaos figures: {summary}")
    for name, value in summary.items():
        record_property(name, value)
    assert not figures.problems, "\n".join(figures.problems)
    assert figures.pairs > 0 and figures.sigkills > 0 and figures.overlaps == 0


@pytest.mark.timeout(SHORT_SECONDS + 80)
def test_chaos_short(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    seed = random.randrange(2**32)
    print(f"chaos seed {seed}")
    check(run_chaos(SHORT_SECONDS, tmp_path, seed), record_property)


@pytest.mark.timeout(60)
def test_the_chaos_checks_catch_a_pool_that_grants_a_slot_twice(tmp_path: Path) -> None:
    """Mutant: token 0 made twice. Killed holders' markers must not hide the overlaps.

    Two holders must hold both copies of 0 at once, which a busy machine (workers slow
    to start) can miss in one short run: up to three runs, each with its own seed.
    """
    for attempt in range(1, 4):
        run_dir = tmp_path / str(attempt)
        run_dir.mkdir()
        figures = run_chaos(3.0, run_dir, seed=attempt, factory=DuplicateTokens())
        print(f"mutant chaos {attempt}: {figures.overlaps} overlaps in {figures.pairs} pairs")
        if figures.overlaps:
            break
    assert figures.overlaps > 0
    assert any("overlaps" in problem for problem in figures.problems)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 120)
def test_chaos_soak(
    tmp_path: Path, record_property: Callable[[str, object], None], request: pytest.FixtureRequest
) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("soak test: run with -m slow")
    seed = random.randrange(2**32)
    print(f"chaos seed {seed}")
    check(run_chaos(SOAK_SECONDS, tmp_path, seed), record_property)
