"""MemoryCore, the memory manager's pure core: focused examples, then a model.

The examples drive a core by hand with synthetic samples and an explicit ``now``.

``Books`` is a reference model written from the docstrings of
``lessor/core/memory.py`` and ``lessor/specs/memory.py``, in exact arithmetic
(fractions of a limit as ``Fraction``, thresholds read from their decimal text):

* a level is entered when the fraction reaches its threshold and left only once the
  fraction is below ``threshold - hysteresis``;
* entering ``cleanup`` runs the process's cleanup handlers, and so does every
  ``cleanup_interval`` spent at or above it; the machine entering ``cleanup`` runs
  every process's handlers;
* a worker (holder != "") at ``pause`` or above has its admission paused, and resumed
  below the band; at ``restart`` it is recycled, once; a process that is gone has its
  pause lifted; the runtime's own process is never paused or recycled;
* the machine at ``pause`` pauses everyone; at ``restart`` it recycles the largest
  worker, unless a worker is already being recycled;
* a leak is judged on points at least ``leak_window / 64`` apart within the window,
  once there are ``MIN_POINTS`` of them spanning half the window (the slope is
  computed with ``statistics.linear_regression``, not the core's ``slope``).

``MemoryMachine`` is a hypothesis state machine that samples a few workers, the
runtime and the machine over time and checks every decision against the books. The
mutant tests at the end show that it (and a scripted run built on the same books)
catches broken cores.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import lessor.core.memory as memory_module
from lessor.core.memory import (
    MIN_POINTS,
    POINTS_PER_WINDOW,
    MemoryCore,
    MemoryTotals,
    Watched,
    level_for,
    next_level,
    slope,
)
from lessor.core.memory_decisions import (
    MACHINE,
    MB,
    RUNTIME,
    Decision,
    LeakChanged,
    LevelChanged,
    ProcessSample,
    Recycle,
    RunCleanup,
    SetAdmission,
    SystemSample,
)
from lessor.specs.memory import LEVELS, MemorySpec, Thresholds
from lessor.specs.memory import MACHINE as MACHINE_THRESHOLDS
from tests.support.mutants import assert_catches, assert_passes

OK, WARN, CLEANUP, PAUSE, RESTART = (LEVELS.index(n) for n in LEVELS)
D = TypeVar("D")

# -- helpers -------------------------------------------------------------------------------

LIMIT = 1000 * MB  # a worker's limit in the examples: rss = fraction * LIMIT
DEFAULT = Thresholds()  # warn .60, cleanup .70, pause .80, restart .95, hysteresis .05
ROOMY = SystemSample(total=64_000 * MB, available=60_000 * MB)


def make(**kw: Any) -> MemoryCore:
    """A core with a fixed worker limit and neither machine watching nor leak detection."""
    base: dict[str, Any] = {"max_memory": LIMIT, "machine": None, "leak_mb_per_min": None}
    return MemoryCore(MemorySpec(**{**base, **kw}))


def proc(fraction: float, key: str = "w", holder: str | None = None) -> ProcessSample:
    """Process ``key`` at ``fraction`` of LIMIT; a worker's holder is "h" + key."""
    if holder is None:
        holder = "" if key == RUNTIME else f"h{key}"
    return ProcessSample(key, 100, round(fraction * LIMIT), holder=holder)


def machine_at(fraction: float, total: int = 1000 * MB) -> SystemSample:
    return SystemSample(total=total, available=total - round(fraction * total))


def of(out: list[Decision], kind: type[D]) -> list[D]:
    return [d for d in out if isinstance(d, kind)]


def moves(out: list[Decision], key: str = "w") -> list[tuple[str, str]]:
    return [(d.previous, d.level) for d in of(out, LevelChanged) if d.key == key]


def admissions(out: list[Decision]) -> list[tuple[str, str, bool]]:
    return [(d.key, d.holder, d.paused) for d in of(out, SetAdmission)]


def cleaned(out: list[Decision]) -> list[str]:
    return [d.key for d in of(out, RunCleanup)]


def recycled(out: list[Decision]) -> list[str]:
    return [d.key for d in of(out, Recycle)]


def went_up(d: LevelChanged) -> bool:
    return LEVELS.index(d.level) > LEVELS.index(d.previous)


def leaks(out: list[Decision]) -> list[tuple[str, bool]]:
    return [(d.key, d.leaking) for d in of(out, LeakChanged)]


# -- level_for, next_level, slope ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "level"),
    [
        (0.0, OK),
        (0.5999, OK),
        (0.6, WARN),
        (0.6999, WARN),
        (0.7, CLEANUP),
        (0.8, PAUSE),
        (0.9499, PAUSE),
        (0.95, RESTART),
        (1.0, RESTART),
        (3.0, RESTART),
    ],
)
def test_level_for_is_the_highest_threshold_reached(fraction: float, level: int) -> None:
    assert level_for(DEFAULT, fraction) == level


def test_level_for_skips_none_thresholds() -> None:
    only_pause = Thresholds(warn=None, cleanup=None, pause=0.8, restart=None)
    assert [level_for(only_pause, f) for f in (0.0, 0.7, 0.79, 0.8, 0.99, 5.0)] == [
        OK, OK, OK, PAUSE, PAUSE, PAUSE,
    ]  # fmt: skip
    gaps = Thresholds(warn=0.5, cleanup=None, pause=0.75, restart=None)
    assert [level_for(gaps, f) for f in (0.49, 0.5, 0.74, 0.75, 1.0)] == [
        OK, WARN, WARN, PAUSE, PAUSE,
    ]  # fmt: skip
    nothing = Thresholds(warn=None, cleanup=None, pause=None, restart=None)
    assert level_for(nothing, 10.0) == OK


@pytest.mark.parametrize(
    ("current", "fraction", "level"),
    [
        (OK, 0.6, WARN),  # up: at once
        (OK, 0.97, RESTART),  # up several levels at once
        (WARN, 0.81, PAUSE),
        (PAUSE, 0.9, PAUSE),
        (PAUSE, 0.7501, PAUSE),  # inside the band: stays
        (PAUSE, 0.7499, CLEANUP),  # below pause - hysteresis: down
        (RESTART, 0.9001, RESTART),
        (RESTART, 0.8999, PAUSE),
        (RESTART, 0.71, CLEANUP),  # down several levels: as far as the band allows
        (RESTART, 0.5, OK),
        (CLEANUP, 0.66, CLEANUP),
        (CLEANUP, 0.64, WARN),
        (WARN, 0.5501, WARN),
        (WARN, 0.5499, OK),
        (OK, 0.59, OK),  # hysteresis never holds a level that was not reached
    ],
)
def test_next_level_goes_up_at_once_and_down_past_the_band(
    current: int, fraction: float, level: int
) -> None:
    assert next_level(DEFAULT, current, fraction) == level


def test_next_level_without_hysteresis_follows_level_for() -> None:
    sharp = Thresholds(hysteresis=0.0)
    for current in range(len(LEVELS)):
        for fraction in (0.0, 0.59, 0.6, 0.69, 0.7, 0.79, 0.8, 0.94, 0.95, 1.2):
            assert next_level(sharp, current, fraction) == level_for(sharp, fraction)


def test_next_level_skips_none_thresholds() -> None:
    t = Thresholds(warn=None, cleanup=None, pause=0.8, restart=None, hysteresis=0.05)
    assert next_level(t, OK, 0.85) == PAUSE
    assert next_level(t, PAUSE, 0.76) == PAUSE
    assert next_level(t, PAUSE, 0.74) == OK  # no cleanup or warn level to land on
    assert next_level(t, OK, 0.79) == OK
    gaps = Thresholds(warn=0.5, cleanup=None, pause=0.75, restart=0.9, hysteresis=0.05)
    assert next_level(gaps, RESTART, 0.86) == RESTART
    assert next_level(gaps, RESTART, 0.84) == PAUSE
    assert next_level(gaps, RESTART, 0.69) == WARN


def test_slope_is_exact_on_linear_data() -> None:
    assert slope([(0.0, 0), (1.0, 2), (2.0, 4), (3.0, 6)]) == 2.0
    assert slope([(10.0, 1000), (12.0, 900), (14.0, 800)]) == -50.0
    points = [(t * 0.5, 7 * MB + 3 * MB * t) for t in range(40)]  # 6 MB per second
    assert slope(points) == pytest.approx(6 * MB, rel=1e-12)


def test_slope_is_zero_on_flat_or_degenerate_data() -> None:
    assert slope([(float(t), 5 * MB) for t in range(10)]) == 0.0
    assert slope([(3.0, 7)]) == 0.0
    assert slope([(3.0, 7), (3.0, 9), (3.0, 100)]) == 0.0  # no spread in time


def test_slope_is_the_least_squares_fit() -> None:
    points = [(0.0, 0), (1.0, 1), (2.0, 0), (3.0, 1)]
    assert slope(points) == pytest.approx(0.2)
    noisy = [(t * 0.7, (t * 37) % 11 * 1000 + t * 500) for t in range(30)]
    fit = statistics.linear_regression([t for t, _ in noisy], [y for _, y in noisy])
    assert slope(noisy) == pytest.approx(fit.slope, rel=1e-9)


# -- one process ---------------------------------------------------------------------------


def test_a_level_changes_on_every_crossing_up_and_down() -> None:
    core = make()
    script: list[tuple[float, tuple[str, str] | None]] = [
        (0.5, None),
        (0.6, ("ok", "warn")),
        (0.69, None),
        (0.7, ("warn", "cleanup")),
        (0.8, ("cleanup", "pause")),
        (0.95, ("pause", "restart")),
        (0.91, None),
        (0.89, ("restart", "pause")),
        (0.76, None),
        (0.74, ("pause", "cleanup")),
        (0.66, None),
        (0.64, ("cleanup", "warn")),
        (0.3, ("warn", "ok")),
        (0.97, ("ok", "restart")),
        (0.2, ("restart", "ok")),
    ]
    for step, (fraction, move) in enumerate(script):
        sample = proc(fraction)
        out = core.observe(float(step), ROOMY, [sample])
        expected = [] if move is None else [LevelChanged("w", *move, sample.rss, LIMIT)]
        assert of(out, LevelChanged) == expected, f"at {fraction}"
        if move is not None:
            assert core.processes["w"].level_name == move[1]
        assert core.processes["w"].fraction == pytest.approx(fraction)
    assert core.processes["w"].level_name == "ok"
    assert core.totals.warnings == 5  # ok->warn, ->cleanup, ->pause, ->restart, ok->restart


def test_cleanup_runs_on_entering_and_again_only_after_cleanup_interval() -> None:
    core = make(cleanup_interval=10.0)
    script = [
        (0.0, 0.69, False),
        (1.0, 0.7, True),  # entering cleanup
        (5.0, 0.75, False),
        (10.99, 0.72, False),
        (11.0, 0.9, True),  # still above, cleanup_interval since the last
        (15.0, 0.85, False),
        (21.0, 0.66, True),  # inside cleanup's band: still at cleanup, and due
        (22.0, 0.6, False),  # down to warn
        (23.0, 0.71, True),  # entering again: at once, though the last ran 2s ago
        (24.0, 0.1, False),
        (100.0, 0.1, False),  # never while below cleanup
    ]
    for now, fraction, runs in script:
        out = core.observe(now, ROOMY, [proc(fraction)])
        assert cleaned(out) == (["w"] if runs else []), f"at {now}"
        if runs:
            (decision,) = of(out, RunCleanup)
            assert "of its 1000 MB limit" in decision.why
    assert core.totals.cleanups == 4


def test_pause_is_set_once_and_lifted_only_below_the_band() -> None:
    core = make()
    script: list[tuple[float, bool | None]] = [
        (0.79, None),
        (0.8, True),
        (0.85, None),
        (0.79, None),
        (0.7501, None),
        (0.7499, False),
        (0.79, None),  # below pause: nothing to do
        (0.8, True),
        (0.99, None),  # (restart: recycled, still paused)
        (0.5, False),
    ]
    for step, (fraction, paused) in enumerate(script):
        out = core.observe(float(step), ROOMY, [proc(fraction)])
        expected = [] if paused is None else [("w", "hw", paused)]
        assert admissions(out) == expected, f"at {fraction}"
        assert core.paused == (["hw"] if core.processes["w"].paused else [])
        assert core.processes["w"].paused == (core.processes["w"].level >= PAUSE)
    assert (core.totals.pauses, core.totals.resumes) == (2, 2)


def test_restart_recycles_a_worker_exactly_once() -> None:
    core = make()
    out = core.observe(0.0, ROOMY, [proc(0.95)])
    assert recycled(out) == ["w"]
    assert admissions(out) == [("w", "hw", True)]  # restart is above pause
    (decision,) = of(out, Recycle)
    assert "950 MB is 95% of its 1000 MB limit" in decision.why
    for now, fraction in [(1.0, 0.99), (2.0, 0.5), (3.0, 0.96), (4.0, 2.0), (99.0, 0.97)]:
        assert recycled(core.observe(now, ROOMY, [proc(fraction)])) == []
    assert core.totals.recycles == 1
    assert list(core.recycled) == [("w", decision.why)]
    assert core.processes["w"].recycling == decision.why


def test_the_runtime_process_is_cleaned_but_never_paused_or_recycled() -> None:
    core = make(cleanup_interval=10.0)
    out = core.observe(0.0, ROOMY, [proc(0.99, RUNTIME), proc(0.99, "w")])
    assert moves(out, RUNTIME) == [("ok", "restart")]
    assert sorted(cleaned(out)) == [RUNTIME, "w"]
    assert admissions(out) == [("w", "hw", True)]
    assert recycled(out) == ["w"]
    for now in (1.0, 10.0, 20.0):
        out = core.observe(now, ROOMY, [proc(0.99, RUNTIME), proc(0.99, "w")])
        assert admissions(out) == [] and recycled(out) == []
        assert sorted(cleaned(out)) == ([RUNTIME, "w"] if now >= 10.0 else [])
    runtime = core.processes[RUNTIME]
    assert runtime.level_name == "restart"
    assert not runtime.paused and not runtime.recycling
    assert core.paused == ["hw"]


def test_a_process_missing_from_a_sample_is_gone_and_its_pause_lifted() -> None:
    core = make()
    core.observe(0.0, ROOMY, [proc(0.85, "w"), proc(0.3, "x"), proc(0.9, RUNTIME)])
    assert core.paused == ["hw"]
    out = core.observe(1.0, ROOMY, [proc(0.9, RUNTIME)])
    assert admissions(out) == [("w", "hw", False)]
    assert of(out, LevelChanged) == []
    assert sorted(core.processes) == [RUNTIME]
    assert core.paused == []
    # back under the same key: a new process, judged afresh
    out = core.observe(2.0, ROOMY, [proc(0.1, "w"), proc(0.9, RUNTIME)])
    assert out == []
    assert core.processes["w"].peak == round(0.1 * LIMIT)
    assert core.processes["w"].level == OK


def test_a_gone_process_that_was_not_paused_goes_quietly() -> None:
    core = make()
    core.observe(0.0, ROOMY, [proc(0.75, "w"), proc(0.96, RUNTIME)])
    assert core.observe(1.0, ROOMY, []) == []
    assert core.processes == {} and core.paused == []


def test_a_worker_limit_from_memory_fraction_of_the_machine_or_its_cgroup() -> None:
    core = make(max_memory=None, memory_fraction=0.5)
    sample = ProcessSample("w", 1, 800 * MB, holder="hw")
    out = core.observe(0.0, SystemSample(2000 * MB, 1500 * MB), [sample])
    assert of(out, LevelChanged) == [LevelChanged("w", "ok", "pause", 800 * MB, 1000 * MB)]
    # in a container the cgroup's limit is the machine's memory: the limit halves
    boxed = SystemSample(64_000 * MB, 60_000 * MB, cgroup_limit=1000 * MB, cgroup_usage=1)
    out = core.observe(1.0, boxed, [sample])
    assert of(out, LevelChanged) == [LevelChanged("w", "pause", "restart", 800 * MB, 500 * MB)]
    assert core.processes["w"].limit == 500 * MB
    both = make(max_memory=300 * MB, memory_fraction=0.5)
    both.observe(0.0, SystemSample(2000 * MB, 1500 * MB), [sample])
    assert both.processes["w"].limit == 300 * MB  # the lower of the two


def test_without_a_limit_there_are_no_levels_but_leaks_are_found() -> None:
    core = make(max_memory=None, leak_mb_per_min=60.0, leak_window=20.0, interval=1.0)
    found = []
    for t in range(30):
        rss = 10_000 * MB + t * 50 * MB  # way past any limit a worker could have
        out = core.observe(float(t), ROOMY, [ProcessSample("w", 1, rss, holder="hw")])
        assert of(out, LevelChanged) == [] and admissions(out) == [] and recycled(out) == []
        assert cleaned(out) == []
        found += [(t, *x) for x in leaks(out)]
    assert found == [(10, "w", True)]  # 11 points spanning half the window
    w = core.processes["w"]
    assert w.limit is None and w.fraction is None and w.level_name == "ok"
    assert w.slope_mb_per_min == pytest.approx(3000.0)


# -- leaks ---------------------------------------------------------------------------------


def test_a_slow_leak_far_below_any_limit_is_flagged_and_cleared() -> None:
    """2 MB/s (120 MB/min, against 60) with a 100 GB limit: no level ever moves."""
    core = make(max_memory=100_000 * MB, leak_mb_per_min=60.0, leak_window=60.0, interval=1.0)
    history: list[tuple[float, int]] = []
    events: list[tuple[int, bool, float]] = []
    reference: dict[int, float] = {}
    for t in range(200):
        rss = 500 * MB + 2 * MB * min(t, 90)  # grows for 90 s, then stays
        history.append((float(t), rss))
        out = core.observe(float(t), ROOMY, [ProcessSample("w", 7, rss, holder="hw")])
        assert [d for d in out if not isinstance(d, LeakChanged)] == []
        window = [(s, y) for s, y in history if s >= t - 60]
        if window[-1][0] - window[0][0] >= 30:
            fit = statistics.linear_regression([s for s, _ in window], [y for _, y in window])
            reference[t] = fit.slope * 60 / MB
        events += [(t, d.leaking, d.slope_mb_per_min) for d in of(out, LeakChanged)]
    (t_on, on, rate_on), (t_off, off, rate_off) = events
    assert (t_on, on) == (30, True)  # not before the samples span half the window
    assert rate_on == pytest.approx(120.0)
    assert t_off > 90 and off is False
    assert rate_off == pytest.approx(reference[t_off]) and rate_off < 30.0
    assert reference[t_off - 1] >= 30.0  # cleared at the first sample below half
    assert all(rate >= 30.0 for s, rate in reference.items() if t_on <= s < t_off)
    assert core.totals.leaks == 1 and not core.processes["w"].leaking
    assert core.processes["w"].level_name == "ok"


def test_leak_points_are_thinned_to_64_per_window() -> None:
    core = make(leak_mb_per_min=60.0, leak_window=64.0, interval=0.25)
    for step in range(1000):  # a sample every 0.25 s, a point every 64 / 64 s
        core.observe(step * 0.25, ROOMY, [proc(0.1)])
    points = list(core.processes["w"].points)
    assert 64 <= len(points) <= 65  # (both ends of the window)
    assert [b[0] - a[0] for a, b in itertools.pairwise(points)] == [1.0] * (len(points) - 1)
    assert points[-1][0] >= 249.75 - 1.0


def test_a_process_shrinking_is_no_leak() -> None:
    core = make(leak_mb_per_min=1.0, leak_window=10.0, interval=0.5)
    for t in range(40):
        out = core.observe(t * 0.5, ROOMY, [proc(0.5 - t * 0.01)])
        assert leaks(out) == []
    slope_now = core.processes["w"].slope_mb_per_min
    assert slope_now is not None and slope_now < 0


# -- the machine ---------------------------------------------------------------------------


def test_machine_pressure_pauses_everyone_and_resumes_below_its_band() -> None:
    core = make(max_memory=None, machine=MACHINE_THRESHOLDS)
    procs = [proc(0.2, RUNTIME), proc(0.2, "w")]
    out = core.observe(0.0, machine_at(0.93), procs)
    assert of(out, LevelChanged) == [LevelChanged(MACHINE, "ok", "pause", 930 * MB, 1000 * MB)]
    assert admissions(out) == [("", "", True)]
    assert sorted(cleaned(out)) == [RUNTIME, "w"]  # the machine entered cleanup
    assert core.paused_all and core.paused == []
    assert admissions(core.observe(1.0, machine_at(0.95), procs)) == []
    assert admissions(core.observe(2.0, machine_at(0.9), procs)) == []  # .92 - .03 = .89
    out = core.observe(3.0, machine_at(0.885), procs)
    assert admissions(out) == [("", "", False)]
    assert moves(out, MACHINE) == [("pause", "cleanup")]
    assert not core.paused_all
    assert (core.totals.pauses, core.totals.resumes) == (1, 1)


def test_a_cgroup_limit_and_usage_are_the_machine_s() -> None:
    core = make(max_memory=None, machine=MACHINE_THRESHOLDS)
    boxed = SystemSample(64_000 * MB, 63_000 * MB, cgroup_limit=1000 * MB, cgroup_usage=930 * MB)
    out = core.observe(0.0, boxed, [])
    assert moves(out, MACHINE) == [("ok", "pause")] and admissions(out) == [("", "", True)]
    assert (core.machine.rss, core.machine.limit) == (930 * MB, 1000 * MB)


def test_no_machine_thresholds_no_machine_levels() -> None:
    core = make(max_memory=None, machine=None)
    out = core.observe(0.0, machine_at(1.0), [proc(0.5, "w")])
    assert out == [] and core.machine.level == OK and not core.paused_all


def test_machine_restart_recycles_the_largest_worker_one_at_a_time() -> None:
    core = make(max_memory=None, machine=MACHINE_THRESHOLDS)
    a, b, runtime = proc(0.3, "a"), proc(0.5, "b"), proc(0.9, RUNTIME)  # the runtime: largest
    out = core.observe(0.0, machine_at(0.97), [a, b, runtime])
    assert recycled(out) == ["b"]
    assert "b is the largest worker" in of(out, Recycle)[0].why
    assert admissions(out) == [("", "", True)]
    for now in (1.0, 2.0, 30.0):  # b is still draining: nobody else
        assert recycled(core.observe(now, machine_at(0.99), [a, b, runtime])) == []
    out = core.observe(31.0, machine_at(0.97), [a, runtime])  # b is gone
    assert recycled(out) == ["a"]
    assert recycled(core.observe(32.0, machine_at(0.99), [a, runtime])) == []
    assert recycled(core.observe(33.0, machine_at(0.99), [runtime])) == []  # no worker left
    assert core.totals.recycles == 2
    assert [key for key, _ in core.recycled] == ["b", "a"]


def test_a_worker_recycling_by_its_own_level_holds_back_the_machine() -> None:
    core = make(max_memory=500 * MB, machine=MACHINE_THRESHOLDS)
    small = ProcessSample("s", 1, 480 * MB, holder="hs")  # 96% of its own limit
    large = ProcessSample("l", 2, 490 * MB, holder="hl")  # 98%: also recycled on its own
    out = core.observe(0.0, machine_at(0.97), [small, large])
    assert sorted(recycled(out)) == ["l", "s"]
    assert recycled(core.observe(1.0, machine_at(0.97), [small, large])) == []
    calm = ProcessSample("c", 3, 10 * MB, holder="hc")
    out = core.observe(2.0, machine_at(0.97), [small, calm])  # l is gone, s still recycling
    assert recycled(out) == []


def test_totals_count_what_was_decided() -> None:
    core = make(cleanup_interval=5.0, leak_mb_per_min=600.0, leak_window=4.0, interval=0.5)
    script = [0.1, 0.65, 0.72, 0.81, 0.7, 0.96, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    seen: list[Decision] = []
    for step, fraction in enumerate(script):
        seen += core.observe(step * 0.5, ROOMY, [proc(fraction)])
    t = core.totals
    assert t == MemoryTotals(
        samples=len(script),
        warnings=sum(1 for d in of(seen, LevelChanged) if went_up(d)),
        cleanups=len(of(seen, RunCleanup)),
        pauses=sum(1 for d in of(seen, SetAdmission) if d.paused),
        resumes=sum(1 for d in of(seen, SetAdmission) if not d.paused),
        recycles=len(of(seen, Recycle)),
        leaks=sum(1 for d in of(seen, LeakChanged) if d.leaking),
    )
    # up: ok->warn->cleanup->pause, cleanup->restart; cleanup entered once (pause->cleanup
    # is no entering, nor due after 5 s); the jump is a leak at 3.5 s, cleared at 4.5 s
    assert (t.warnings, t.cleanups, t.pauses, t.resumes, t.recycles, t.leaks) == (4, 1, 2, 2, 1, 1)
    assert leaks(seen) == [("w", True), ("w", False)]


# -- bugs ----------------------------------------------------------------------------------


def test_a_leak_is_found_with_the_shortest_leak_window_the_spec_allows() -> None:
    spec = MemorySpec(max_memory=None, machine=None, interval=1.0, leak_window=8.0)
    core = MemoryCore(spec)  # 8 intervals: the least the spec accepts
    found: list[LeakChanged] = []
    for t in range(120):  # sampled every interval; grows 6000 MB/min, 100x the threshold
        sample = ProcessSample("w", 1, 100 * MB + t * 100 * MB, holder="hw")
        found += of(core.observe(float(t), ROOMY, [sample]), LeakChanged)
    assert [d.leaking for d in found] == [True]


def test_one_sample_runs_a_process_cleanups_at_most_once() -> None:
    core = make(machine=MACHINE_THRESHOLDS)
    out = core.observe(0.0, machine_at(0.89), [proc(0.71, "w")])
    assert moves(out, "w") == [("ok", "cleanup")] and moves(out, MACHINE) == [("ok", "cleanup")]
    assert cleaned(out) == ["w"]


# -- the reference model -------------------------------------------------------------------


def exact(value: float | None) -> Fraction | None:
    """A threshold as the decimal its author wrote (0.8 is 4/5, not the nearest double)."""
    return None if value is None else Fraction(str(value))


class Bands:
    """A Thresholds and its level rules, in exact arithmetic."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.at = [exact(v) for _, v in thresholds.levels()]
        self.hysteresis = Fraction(str(thresholds.hysteresis))
        pause = self.at[PAUSE - 1]
        assert pause is not None, "the model needs a pause threshold"
        self.pause = pause

    def reached(self, f: Fraction) -> int:
        return max((i for i, t in enumerate(self.at, 1) if t is not None and f >= t), default=0)

    def next(self, current: int, f: Fraction) -> int:
        """Up at once; down to the highest level whose threshold is within the band."""
        up = self.reached(f)
        if up >= current:
            return up
        held = [i for i, t in enumerate(self.at, 1)
                if i <= current and t is not None and f >= t - self.hysteresis]  # fmt: skip
        return max(held, default=0)


@dataclass
class MProc:
    key: str
    holder: str
    rss: int = 0
    level: int = 0
    recycled: bool = False
    paused_at: float = 0.0
    last_cleanup: float = -math.inf
    points: list[tuple[float, int]] = field(default_factory=list)
    leaking: bool = False


@dataclass
class Step:
    """What one sample should decide, as the books work it out."""

    levels: dict[str, LevelChanged] = field(default_factory=dict)
    fractions: dict[str, Fraction] = field(default_factory=dict)
    cleanups: set[str] = field(default_factory=set)
    recycles: set[str] = field(default_factory=set)
    largest: set[str] = field(default_factory=set)  # the machine must recycle one of these
    paused_too_long: set[str] = field(default_factory=set)  # recycled for max_pause
    leaks: dict[str, tuple[bool, float]] = field(default_factory=dict)
    leak_either: set[str] = field(default_factory=set)  # at the edge: either answer
    gone: dict[str, MProc] = field(default_factory=dict)
    machine_fraction: Fraction | None = None
    warnings: int = 0


class Books:
    """What a MemoryCore must decide, written from the docstrings; checks a core's
    answer to every sample and its state after it."""

    def __init__(self, spec: MemorySpec) -> None:
        self.spec = spec
        self.bands = Bands(spec.thresholds)
        self.machine_bands = None if spec.machine is None else Bands(spec.machine)
        self.procs: dict[str, MProc] = {}
        self.machine_level = 0
        self.machine_cleanup = -math.inf
        self.paused: dict[str, bool] = {}  # holder -> paused, from the SetAdmissions seen
        self.paused_all = False
        self.admitted_at: dict[str, Fraction] = {}  # holder ("" everyone) -> its last
        self.recycled_ever: set[str] = set()
        self.totals = MemoryTotals()
        self.resumes_gone = 0

    # -- what the machine and each process may use

    @staticmethod
    def machine_limit(system: SystemSample) -> int:
        if system.cgroup_limit is None:
            return system.total
        return min(system.total, system.cgroup_limit)

    @staticmethod
    def machine_used(system: SystemSample) -> int:
        if system.cgroup_limit is not None and system.cgroup_usage is not None:
            return system.cgroup_usage
        return max(0, system.total - system.available)

    def limit(self, system: SystemSample) -> int | None:
        s, machine = self.spec, self.machine_limit(system)
        limits = [] if s.max_memory is None else [s.max_memory]
        if s.memory_fraction is not None:
            limits.append(int(s.memory_fraction * machine))
        return min(limits) if limits else None

    # -- one sample

    def observe(
        self, core: MemoryCore, now: float, system: SystemSample, samples: list[ProcessSample]
    ) -> list[Decision]:
        out = core.observe(now, system, samples)
        assert isinstance(out, list), out
        kinds = (LevelChanged, LeakChanged, RunCleanup, SetAdmission, Recycle)
        assert all(isinstance(d, kinds) for d in out), out
        step = self.expect(now, system, samples)
        self.check_levels(out, step)
        self.check_leaks(out, step)
        self.check_cleanups(out, step, now)
        self.check_admissions(out, step)
        self.check_recycles(out, step)
        self.check_totals(core, out)
        self.check_state(core)
        return out

    def expect(self, now: float, system: SystemSample, samples: list[ProcessSample]) -> Step:
        step, interval = Step(), self.spec.cleanup_interval
        limit = self.limit(system)
        for s in samples:
            p = self.procs.setdefault(s.key, MProc(s.key, s.holder))
            p.holder, p.rss = s.holder, s.rss
            self.expect_leak(now, p, step)
            if not limit:
                continue
            f = step.fractions[s.key] = Fraction(s.rss, limit)
            previous, p.level = p.level, self.bands.next(p.level, f)
            if p.level != previous:
                step.levels[s.key] = LevelChanged(
                    s.key, LEVELS[previous], LEVELS[p.level], s.rss, limit
                )
                step.warnings += p.level > previous
            if p.level >= CLEANUP and (previous < CLEANUP or now - p.last_cleanup >= interval):
                step.cleanups.add(s.key)
            if p.level >= PAUSE > previous:
                p.paused_at = now
            max_pause = self.spec.max_pause
            if p.holder and p.level >= RESTART and not p.recycled:
                step.recycles.add(s.key)
                p.recycled = True
            elif (p.holder and p.level >= PAUSE and not p.recycled and max_pause is not None
                  and now - p.paused_at >= max_pause):  # fmt: skip
                step.recycles.add(s.key)  # paused too long, whatever its fraction
                step.paused_too_long.add(s.key)
                p.recycled = True
        seen = {s.key for s in samples}
        step.gone = {k: self.procs.pop(k) for k in list(self.procs) if k not in seen}
        self.expect_machine(now, system, step)
        for key in step.cleanups:
            self.procs[key].last_cleanup = now
        return step

    def expect_leak(self, now: float, p: MProc, step: Step) -> None:
        threshold, window = self.spec.leak_mb_per_min, self.spec.leak_window
        if threshold is None:
            return
        if not p.points or now - p.points[-1][0] >= window / POINTS_PER_WINDOW:
            p.points.append((now, p.rss))
        p.points = [(t, y) for t, y in p.points if t >= now - window]
        if len(p.points) < MIN_POINTS or p.points[-1][0] - p.points[0][0] < window / 2:
            return
        fit = statistics.linear_regression([t for t, _ in p.points], [y for _, y in p.points])
        rate = fit.slope * 60 / MB
        edge = threshold / 2 if p.leaking else threshold
        if abs(rate - edge) <= 1e-6 * max(1.0, edge):
            step.leak_either.add(p.key)  # float rounding may land either side
        elif rate >= threshold and not p.leaking:
            step.leaks[p.key] = (True, rate)
        elif rate < threshold / 2 and p.leaking:
            step.leaks[p.key] = (False, rate)

    def expect_machine(self, now: float, system: SystemSample, step: Step) -> None:
        bands, limit = self.machine_bands, self.machine_limit(system)
        if bands is None or limit <= 0:
            return
        used = self.machine_used(system)
        f = step.machine_fraction = Fraction(used, limit)
        previous, level = self.machine_level, bands.next(self.machine_level, f)
        self.machine_level = level
        if level != previous:
            step.levels[MACHINE] = LevelChanged(MACHINE, LEVELS[previous], LEVELS[level], used,
                                                limit)  # fmt: skip
            step.warnings += level > previous
        interval = self.spec.cleanup_interval
        if level >= CLEANUP and (previous < CLEANUP or now - self.machine_cleanup >= interval):
            self.machine_cleanup = now  # every process whose cleanup is due, whatever its level
            step.cleanups |= {k for k, p in self.procs.items() if now - p.last_cleanup >= interval}
        workers = {k: p for k, p in self.procs.items() if p.holder}
        if level >= RESTART and workers and not any(p.recycled for p in workers.values()):
            top = max(p.rss for p in workers.values())
            step.largest = {k for k, p in workers.items() if p.rss == top}

    # -- the checks

    def check_levels(self, out: list[Decision], step: Step) -> None:
        got = [d for d in out if isinstance(d, LevelChanged)]
        by_key = {d.key: d for d in got}
        assert len(by_key) == len(got), f"two LevelChanged for one key: {got}"
        for key in sorted(set(by_key) | set(step.levels)):
            where = f" at fraction {float(step.fractions.get(key, -1)):.4f}"
            if key == MACHINE:
                where = f" at fraction {float(step.machine_fraction or -1):.4f}"
            assert by_key.get(key) == step.levels.get(key), (
                f"{key}: level {by_key.get(key)}, expected {step.levels.get(key)}{where}"
            )

    def check_leaks(self, out: list[Decision], step: Step) -> None:
        got = [d for d in out if isinstance(d, LeakChanged)]
        by_key = {d.key: d for d in got}
        assert len(by_key) == len(got), f"two LeakChanged for one key: {got}"
        for key in step.leak_either & set(by_key):
            p = self.procs[key]
            assert by_key[key].leaking != p.leaking, f"{key}: leak {by_key[key]} repeats"
            p.leaking = by_key[key].leaking
        for key in set(by_key) - step.leak_either:
            assert key in step.leaks, f"{key}: {by_key[key]}, expected no leak change"
        for key, (leaking, rate) in step.leaks.items():
            d = by_key.get(key)
            assert d is not None, f"{key}: expected a leak change to {leaking} at {rate} MB/min"
            assert d.leaking == leaking, f"{key}: leak {d}, expected {leaking}"
            assert d.slope_mb_per_min == pytest.approx(rate, rel=1e-6, abs=1e-6), (d, rate)
            self.procs[key].leaking = leaking

    def check_cleanups(self, out: list[Decision], step: Step, now: float) -> None:
        keys = [d.key for d in out if isinstance(d, RunCleanup)]
        assert len(keys) == len(set(keys)), f"a process cleaned twice in one sample: {keys}"
        got = set(keys)
        assert got <= set(self.procs), f"RunCleanup for no process watched: {got}"
        assert got == step.cleanups, (
            f"RunCleanup for {sorted(got)} at {now}, expected {sorted(step.cleanups)}"
        )

    def check_admissions(self, out: list[Decision], step: Step) -> None:
        got = [d for d in out if isinstance(d, SetAdmission)]
        holders = [d.holder for d in got]
        assert len(set(holders)) == len(holders), f"two SetAdmission for one holder: {got}"
        for d in got:
            if d.key == "" and d.holder == "":
                self.admit_everyone(d, step)
                continue
            assert d.holder != "", f"SetAdmission for the runtime process: {d}"
            p = self.procs.get(d.key) or step.gone.get(d.key)
            assert p is not None, f"SetAdmission for a process never watched: {d}"
            assert p.holder == d.holder, f"SetAdmission names holder {d.holder}, not {p.holder}"
            assert self.paused.get(d.holder, False) != d.paused, f"SetAdmission repeats: {d}"
            if d.key in step.gone:
                assert not d.paused, f"a gone process paused: {d}"
            else:
                self.no_flapping(d.holder, d.paused, step.fractions[d.key], self.bands)
            self.paused[d.holder] = d.paused
        for p in self.procs.values():
            if p.holder:
                assert self.paused.get(p.holder, False) == (p.level >= PAUSE), (
                    f"{p.key} at {LEVELS[p.level]} has paused={self.paused.get(p.holder)}"
                )
        for p in step.gone.values():
            assert not self.paused.pop(p.holder, False), f"gone {p.key} stays paused"
            self.admitted_at.pop(p.holder, None)
        assert self.paused_all == (self.machine_level >= PAUSE), (
            f"the machine at {LEVELS[self.machine_level]}, everyone paused={self.paused_all}"
        )
        for d in got:
            self.resumes_gone += d.key in step.gone

    def admit_everyone(self, d: SetAdmission, step: Step) -> None:
        assert self.machine_bands is not None and step.machine_fraction is not None, d
        assert self.paused_all != d.paused, f"SetAdmission for everyone repeats: {d}"
        self.no_flapping("", d.paused, step.machine_fraction, self.machine_bands)
        self.paused_all = d.paused

    def no_flapping(self, holder: str, paused: bool, f: Fraction, bands: Bands) -> None:
        """Paused at the pause threshold or above, resumed only below the band, so between
        two SetAdmission the fraction crossed the whole band."""
        low = bands.pause - bands.hysteresis
        if paused:
            assert f >= bands.pause, f"{holder!r} paused at {float(f)} < {float(bands.pause)}"
        else:
            assert f < low, f"{holder!r} resumed at {float(f)}, inside the band ({float(low)})"
        before = self.admitted_at.get(holder)
        if before is not None:
            assert abs(before - f) > bands.hysteresis, (
                f"{holder!r} flapped: {float(before)} -> {float(f)} within the band"
            )
        self.admitted_at[holder] = f

    def check_recycles(self, out: list[Decision], step: Step) -> None:
        keys = [d.key for d in out if isinstance(d, Recycle)]
        for key in keys:
            assert key not in self.recycled_ever, f"Recycle({key}) twice"
            p = self.procs.get(key)
            assert p is not None, f"Recycle of {key}, not a live process"
            assert p.holder, f"Recycle of the runtime process {key}"
            self.recycled_ever.add(key)
        got = set(keys)
        assert len(got) == len(keys), f"Recycle twice in a sample: {keys}"
        missing = step.recycles - got
        assert not missing, f"{sorted(missing)} reached restart, no Recycle"
        for key in step.recycles - step.paused_too_long:
            f = step.fractions[key]
            assert f >= (self.bands.at[RESTART - 1] or 0), f"{key} recycled at {float(f)}"
        by_machine = got - step.recycles
        if not step.largest:
            recycling = sorted(k for k, p in self.procs.items() if p.recycled)
            assert not by_machine, (
                f"Recycle({sorted(by_machine)}) below restart, or while {recycling} recycling"
            )
        else:
            assert len(by_machine) == 1 and by_machine <= step.largest, (
                f"the machine at restart recycled {sorted(by_machine)}, "
                f"expected one of {sorted(step.largest)}"
            )
            self.procs[next(iter(by_machine))].recycled = True

    def check_totals(self, core: MemoryCore, out: list[Decision]) -> None:
        t = self.totals
        t.samples += 1
        t.warnings += sum(1 for d in out if isinstance(d, LevelChanged) and went_up(d))
        t.cleanups += sum(1 for d in out if isinstance(d, RunCleanup))
        t.pauses += sum(1 for d in out if isinstance(d, SetAdmission) and d.paused)
        t.resumes += sum(1 for d in out if isinstance(d, SetAdmission) and not d.paused)
        t.recycles += sum(1 for d in out if isinstance(d, Recycle))
        t.leaks += sum(1 for d in out if isinstance(d, LeakChanged) and d.leaking)
        c = core.totals
        got = (c.samples, c.warnings, c.cleanups, c.pauses, c.recycles, c.leaks)
        assert got == (t.samples, t.warnings, t.cleanups, t.pauses, t.recycles, t.leaks), (c, t)
        # (a gone process's pause lifted may or may not count as a resume)
        assert t.resumes - self.resumes_gone <= c.resumes <= t.resumes, (c, t)

    def check_state(self, core: MemoryCore) -> None:
        assert sorted(core.processes) == sorted(self.procs), "the processes watched"
        for key, p in self.procs.items():
            w: Watched = core.processes[key]
            assert w.level == p.level, f"{key}: core at {w.level_name}, books {LEVELS[p.level]}"
            assert bool(w.recycling) == p.recycled, f"{key}: recycling {w.recycling!r}"
            assert w.leaking == p.leaking, f"{key}: leaking {w.leaking}"
        assert core.paused == sorted(h for h, paused in self.paused.items() if paused), (
            f"core.paused {core.paused}, books {self.paused}"
        )
        assert core.paused_all == self.paused_all
        assert core.machine.level == self.machine_level


# -- the state machine ---------------------------------------------------------------------

UNIT = MB  # a worker's limit is 200 units: rss k units is the fraction k/200
GRID = 200
SYSTEM = 800 * UNIT  # the machine's memory: a used fraction k/200 is 4k units
# Thresholds are multiples of 1/100 and fractions multiples of 1/200; a hysteresis off
# that grid keeps "threshold - hysteresis" off it too, where float rounding could decide.
PROCESS_BANDS = [
    (0.6, 0.7, 0.8, 0.95),
    (None, 0.7, 0.8, 0.9),
    (0.5, None, 0.75, 0.85),
    (0.6, 0.7, 0.8, None),
]
MACHINE_BANDS = [(0.85, 0.88, 0.92, 0.96), (0.5, 0.6, 0.7, 0.8)]
HYSTERESIS = [0.0, 0.0125, 0.0375, 0.0625]
STEPS = [0.5, 1.0, 2.5, 5.0, 12.0]


def thresholds(levels: tuple[float | None, ...], hysteresis: float) -> Thresholds:
    warn, cleanup, pause, restart = levels
    return Thresholds(warn, cleanup, pause, restart, hysteresis)


def draw_spec(data: st.DataObject) -> MemorySpec:
    def draw(label: str, values: list[Any]) -> Any:
        return data.draw(st.sampled_from(values), label=label)

    limit = draw("limit", ["max", "max", "fraction", "none"])
    machine = draw("machine", [True, True, False])
    leak = draw("leak", [None, (60.0, 10.0), (600.0, 30.0)])
    return MemorySpec(
        max_memory=GRID * UNIT if limit == "max" else None,
        memory_fraction=0.25 if limit == "fraction" else None,  # of SYSTEM: 200 units
        thresholds=thresholds(draw("bands", PROCESS_BANDS), draw("hysteresis", HYSTERESIS)),
        machine=thresholds(draw("machine_bands", MACHINE_BANDS),
                           draw("machine_hysteresis", HYSTERESIS[:3])) if machine else None,
        interval=0.5,
        leak_mb_per_min=None if leak is None else leak[0],
        leak_window=30.0 if leak is None else leak[1],
        cleanup_interval=draw("cleanup_interval", [3.0, 10.0]),
        max_pause=draw("max_pause", [None, 4.0, 10.0]),
    )  # fmt: skip


class MemoryMachine(RuleBasedStateMachine):
    """Samples a few workers, the runtime and the machine; the books check every answer."""

    CORE: ClassVar[type[MemoryCore]] = MemoryCore

    def __init__(self) -> None:
        super().__init__()
        self.core: MemoryCore | None = None
        self.books: Books | None = None
        self.now = 0.0
        self.present: dict[str, tuple[str, int]] = {}  # key -> (holder, rss in units)
        self.machine_k = 100
        self.cgroup = False
        self.serial = 0

    @initialize(data=st.data(), cgroup=st.booleans())
    def setup(self, data: st.DataObject, cgroup: bool) -> None:
        self.start(draw_spec(data), cgroup)

    def start(self, spec: MemorySpec, cgroup: bool = False) -> None:
        self.core, self.books, self.cgroup = self.CORE(spec), Books(spec), cgroup
        self.present = {RUNTIME: ("", 100)}
        self.add_worker(100)
        self.add_worker(150)

    def add_worker(self, k: int) -> str:
        self.serial += 1
        key = f"w{self.serial}"  # a fresh key for every worker, as a supervisor gives
        self.present[key] = (f"h{self.serial}", k)
        return key

    @property
    def c(self) -> MemoryCore:
        assert self.core is not None
        return self.core

    @property
    def b(self) -> Books:
        assert self.books is not None
        return self.books

    def workers(self) -> list[str]:
        return [k for k, (holder, _) in self.present.items() if holder]

    # -- rules

    @precondition(lambda self: self.core is not None and len(self.workers()) < 4)
    @rule(k=st.integers(0, 215))
    def spawn(self, k: int) -> None:
        self.add_worker(k)

    @precondition(lambda self: self.core is not None and bool(self.workers()))
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        """A worker exits (or its recycle ends): the next sample leaves it out."""
        del self.present[data.draw(st.sampled_from(self.workers()), label="killed")]

    @precondition(lambda self: self.core is not None)
    @rule(data=st.data(), dt=st.sampled_from(STEPS))
    def step(self, data: st.DataObject, dt: float) -> None:
        def near(k: int, low: int, high: int) -> st.SearchStrategy[int]:
            return st.one_of(st.integers(low, high), st.integers(max(0, k - 6), k + 6))

        for key, (holder, k) in list(self.present.items()):
            self.present[key] = (holder, data.draw(near(k, 0, 215), label=key))
        self.machine_k = data.draw(near(self.machine_k, 90, 200), label="machine")
        self.machine_k = min(self.machine_k, GRID)
        order = data.draw(st.permutations(sorted(self.present)), label="order")
        self.now += dt
        self.observe([self.sample(key) for key in order])

    def sample(self, key: str) -> ProcessSample:
        holder, k = self.present[key]
        pid = 1000 + int(key[1:]) if holder else 999
        return ProcessSample(key, pid, k * UNIT, None, holder)

    def system(self) -> SystemSample:
        used = self.machine_k * SYSTEM // GRID
        if self.cgroup:  # the machine is a container of a bigger host
            return SystemSample(5 * SYSTEM, 2 * SYSTEM, cgroup_limit=SYSTEM, cgroup_usage=used)
        return SystemSample(SYSTEM, SYSTEM - used)

    def observe(self, samples: list[ProcessSample]) -> list[Decision]:
        return self.b.observe(self.c, self.now, self.system(), samples)

    # -- invariants

    @invariant()
    def agrees(self) -> None:
        if self.core is not None:
            self.b.check_state(self.c)


FAST = settings(
    max_examples=75,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_memory_core_state_machine() -> None:
    run_state_machine_as_test(MemoryMachine, settings=FAST)


# -- the checker catches broken cores ------------------------------------------------------


@contextmanager
def replaced(name: str, value: Any) -> Iterator[None]:
    old = getattr(memory_module, name)
    setattr(memory_module, name, value)
    try:
        yield
    finally:
        setattr(memory_module, name, old)


class NoHysteresis(MemoryCore):
    """Leaves a level as soon as the fraction is below its threshold."""

    def observe(
        self, now: float, system: SystemSample, processes: Iterable[ProcessSample]
    ) -> list[Decision]:
        def sharp(t: Thresholds, current: int, fraction: float) -> int:
            return level_for(t, fraction)

        with replaced("next_level", sharp):
            return super().observe(now, system, processes)


class ResumesAtThePauseThreshold(MemoryCore):
    """Lifts a pause as soon as the fraction is below pause (the level still holds)."""

    def _judge(self, now: float, w: Watched, fraction: float, out: list[Decision]) -> None:
        super()._judge(now, w, fraction, out)
        pause = self.spec.thresholds.pause
        if w.holder and w.paused and pause is not None and fraction < pause:
            w.paused = False
            out.append(SetAdmission(w.key, w.holder, False, "mutant"))


class RecyclesTwice(MemoryCore):
    """Recycles a worker again each time its level comes back to restart."""

    def _judge(self, now: float, w: Watched, fraction: float, out: list[Decision]) -> None:
        before = w.level
        super()._judge(now, w, fraction, out)
        again = w.holder and w.recycling and w.level >= RESTART > before
        if again and not any(isinstance(d, Recycle) and d.key == w.key for d in out):
            self._recycle(w, "again", out)


class PausesTheRuntime(MemoryCore):
    """Pauses the runtime's own process as if it were a worker."""

    def _judge(self, now: float, w: Watched, fraction: float, out: list[Decision]) -> None:
        super()._judge(now, w, fraction, out)
        if not w.holder and w.level >= PAUSE and not w.paused:
            w.paused = True
            out.append(SetAdmission(w.key, w.holder, True, "mutant"))


class ForgetsTheGone(MemoryCore):
    """Drops a gone process without lifting its pause."""

    def observe(
        self, now: float, system: SystemSample, processes: Iterable[ProcessSample]
    ) -> list[Decision]:
        samples = list(processes)
        seen = {s.key for s in samples}
        for key, w in self.processes.items():
            if key not in seen:
                w.paused = False
        return super().observe(now, system, samples)


class MachineRecyclesEverySample(MemoryCore):
    """Machine pressure recycles the largest worker at every sample, recycling or not."""

    def _judge_machine(
        self, now: float, thresholds: Thresholds, system: SystemSample, out: list[Decision]
    ) -> None:
        saved = {key: w.recycling for key, w in self.processes.items()}
        for w in self.processes.values():
            w.recycling = ""
        try:
            super()._judge_machine(now, thresholds, system, out)
        finally:
            for key, why in saved.items():
                self.processes[key].recycling = self.processes[key].recycling or why


class LeakNeverClears(MemoryCore):
    """Once a process is flagged leaking, it stays flagged."""

    def _leak(self, now: float, w: Watched, out: list[Decision]) -> None:
        was = w.leaking
        super()._leak(now, w, out)
        if was and not w.leaking:
            w.leaking = True
            out.pop()


MUTANTS: dict[type[MemoryCore], str] = {  # the mutant: what the books say (a regex)
    NoHysteresis: "level|flapped|inside the band",
    ResumesAtThePauseThreshold: "inside the band|flapped|paused=",
    RecyclesTwice: r"Recycle\(\w+\) twice",
    PausesTheRuntime: "runtime process|two SetAdmission for one holder",
    ForgetsTheGone: "stays paused",
    MachineRecyclesEverySample: "twice|while",
    LeakNeverClears: "leak change",
}


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=[m.__name__ for m in MUTANTS])
def test_the_state_machine_catches_a_mutant(mutant: type[MemoryCore]) -> None:
    print(mutant.__name__, "->", assert_catches(MemoryMachine, mutant, MUTANTS[mutant]))


def test_the_state_machine_passes_the_real_core_with_the_mutant_settings() -> None:
    """The mutant runs above fail because of the mutants, not the settings."""
    assert_passes(MemoryMachine, max_examples=50)


def scripted(core: type[MemoryCore]) -> None:
    """Pause, resume, restart, a paused worker gone, machine pressure: checked throughout."""
    machine = type("Scripted", (MemoryMachine,), {"CORE": core})()
    machine.start(
        MemorySpec(
            max_memory=GRID * UNIT,
            thresholds=Thresholds(hysteresis=0.0375),
            machine=Thresholds(0.85, 0.88, 0.92, 0.96, 0.0125),
            interval=0.5,
            leak_mb_per_min=None,
            cleanup_interval=3.0,
        )
    )
    w1, w2 = "w1", "w2"
    script: list[tuple[dict[str, int], int, Callable[[], None] | None]] = [
        ({RUNTIME: 100, w1: 100, w2: 100}, 100, None),
        ({RUNTIME: 170, w1: 165, w2: 100}, 100, None),  # w1 paused, the runtime not
        ({RUNTIME: 196, w1: 155, w2: 100}, 100, None),  # w1 in the band
        ({RUNTIME: 150, w1: 145, w2: 100}, 100, None),  # w1 resumed
        ({RUNTIME: 100, w1: 192, w2: 100}, 100, None),  # w1 recycled
        ({RUNTIME: 100, w1: 120, w2: 100}, 100, None),
        ({RUNTIME: 100, w1: 195, w2: 170}, 100, None),  # w1 again: no second recycle
        ({RUNTIME: 100, w1: 100}, 100, lambda: machine.present.pop(w2)),  # paused w2 gone
        ({RUNTIME: 100, w1: 100, "w3": 120}, 186, lambda: machine.add_worker(120)),  # all paused
        ({RUNTIME: 100, w1: 100, "w3": 120}, 193, None),  # restart: w1 is still recycling
        ({RUNTIME: 100, "w3": 120}, 193, lambda: machine.present.pop(w1)),  # w3 recycled
        ({RUNTIME: 100, "w3": 120}, 150, None),  # everyone resumed
    ]
    for rss, machine_k, before in script:
        if before is not None:
            before()
        assert sorted(machine.present) == sorted(rss), (machine.present, rss)
        for key, k in rss.items():
            machine.present[key] = (machine.present[key][0], k)
        machine.machine_k = machine_k
        machine.now += 1.0
        machine.observe([machine.sample(key) for key in rss])
        machine.agrees()
    assert machine.b.recycled_ever == {"w1", "w3"}


def test_a_scripted_run_passes_the_real_core() -> None:
    scripted(MemoryCore)


@pytest.mark.parametrize(
    ("mutant", "says"),
    [
        (NoHysteresis, "level"),
        (ResumesAtThePauseThreshold, "inside the band"),
        (RecyclesTwice, "twice"),
        (PausesTheRuntime, "runtime process"),
        (ForgetsTheGone, "stays paused"),
        (MachineRecyclesEverySample, "twice|while"),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else None,
)
def test_a_scripted_run_catches_a_mutant(mutant: type[MemoryCore], says: str) -> None:
    with pytest.raises(AssertionError, match=says):
        scripted(mutant)


def test_a_worker_paused_longer_than_max_pause_is_recycled_once() -> None:
    core = make(max_pause=5.0)
    assert admissions(core.observe(0.0, ROOMY, [proc(0.85)])) == [("w", "hw", True)]
    assert recycled(core.observe(4.9, ROOMY, [proc(0.85)])) == []  # not yet
    out = core.observe(5.0, ROOMY, [proc(0.85)])
    (decision,) = of(out, Recycle)
    assert decision.key == "w" and decision.why.startswith("paused 5.0s")
    assert recycled(core.observe(20.0, ROOMY, [proc(0.85)])) == []  # once
    assert core.totals.recycles == 1


def test_a_pause_that_lifts_in_time_recycles_nothing() -> None:
    core = make(max_pause=5.0)
    core.observe(0.0, ROOMY, [proc(0.85)])
    assert admissions(core.observe(3.0, ROOMY, [proc(0.5)])) == [("w", "hw", False)]
    core.observe(4.0, ROOMY, [proc(0.85)])  # paused again: its clock starts again
    assert recycled(core.observe(8.9, ROOMY, [proc(0.85)])) == []
    assert recycled(core.observe(9.0, ROOMY, [proc(0.85)])) == ["w"]


def test_max_pause_none_keeps_a_worker_paused() -> None:
    core = make(max_pause=None)
    core.observe(0.0, ROOMY, [proc(0.85)])
    assert recycled(core.observe(10_000.0, ROOMY, [proc(0.85)])) == []
    assert core.paused == ["hw"]
