"""The overlap checker catches pools and handles broken on purpose (mutants).

A check that passes against a correct pool proves little unless it fails against a
broken one: each mutant run here must be detected.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lessor import PoolHandle, PoolSpec, Runtime, TokenFactory, start_pool
from tests.support.helpers import wait_until
from tests.support.overlap import (
    DuplicateTokens,
    IntervalLog,
    Markers,
    ParksAndReleases,
    assert_exclusive,
    hammer_with_checks,
    overlapping,
)
from tests.workers import targets

ROOT = Path(__file__).parents[2]


@pytest.fixture
def pools() -> Iterator[list[PoolHandle]]:
    started: list[PoolHandle] = []
    yield started
    for pool in started:
        pool.stop(timeout=5)


def test_markers_record_a_second_live_holder_and_let_the_run_go_on(tmp_path: Path) -> None:
    markers = Markers(tmp_path)
    assert markers.mark("r")
    taken = threading.Event()
    second: list[bool] = []

    def rival() -> None:  # another thread, as another holder would be
        second.append(markers.mark("r"))
        taken.set()

    thread = threading.Thread(target=rival)
    thread.start()
    assert taken.wait(5)
    thread.join()
    assert second == [False]  # recorded, not raised
    markers.unmark("r")
    assert markers.held() == []
    with markers.holding("r"), markers.holding("s"):  # one after the other: fine
        assert markers.held() == ["r.held", "s.held"]
    assert len(markers.overlaps()) == 1 and "found" in markers.overlaps()[0]


def test_ctrl_c_waits_until_the_marker_is_dropped(tmp_path: Path) -> None:
    """A KeyboardInterrupt mid-hold must not leave a marker behind its living owner."""
    markers = Markers(tmp_path)
    reached = []
    with pytest.raises(KeyboardInterrupt), markers.holding("r"):
        signal.raise_signal(signal.SIGINT)
        reached.append(markers.held())  # not interrupted while the marker is ours
    assert reached == [["r.held"]]
    assert markers.held() == [] and markers.overlaps() == []


def test_intervals_catch_an_overlap_and_too_many_held() -> None:
    log = IntervalLog()
    log.record("a", 1.0, 2.0)
    log.record("a", 1.5, 2.5)
    log.record("b", 3.0, 4.0)
    assert overlapping(log.holds) == [("a", (1.0, 2.0), (1.5, 2.5))]
    with pytest.raises(AssertionError, match="1 overlaps"):
        assert_exclusive(log.holds, limit=2)
    apart = {"a": [(1.0, 2.0), (2.0, 3.0)], "b": [(1.5, 2.5)]}
    assert_exclusive(apart, limit=2)  # a release and a grant at one instant do not clash
    with pytest.raises(AssertionError, match="2 resources held at once"):
        assert_exclusive(apart, limit=1)


MARK_AND_WAIT = """
import sys, time
from tests.support.overlap import Markers
Markers(sys.argv[1]).mark("t")
print("marked", flush=True)
time.sleep(60)
"""


def test_a_marker_left_by_a_killed_holder_is_judged_by_when_it_was_killed(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", MARK_AND_WAIT, str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "marked\n"
    killed_at = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    markers = Markers(tmp_path)
    assert markers.mark("t", since=killed_at + 0.001)  # taken over: the holder is dead
    markers.unmark("t")
    assert markers.stale() == 1
    assert markers.overlaps(killed={proc.pid: killed_at}) == []  # granted after the kill
    assert len(markers.overlaps()) == 1  # a death nobody caused: suspect
    assert len(markers.overlaps(killed={proc.pid: killed_at + 1})) == 1  # granted before


def test_a_killed_holder_found_in_place_is_an_overlap_only_if_granted_before_the_kill(
    tmp_path: Path,
) -> None:
    """A SIGKILLed process closes its socket (its lease is reclaimed) before it is reaped."""
    markers = Markers(tmp_path)
    markers._record("overlaps.log", "'t'\t11 1\tfound\t22 2\t100.5")  # 22 seen alive
    assert len(markers.overlaps()) == 1
    assert len(markers.overlaps(killed={22: 100.0})) == 0  # granted after the kill
    assert len(markers.overlaps(killed={22: 101.0})) == 1  # granted before it
    assert len(markers.overlaps(killed={11: 100.0})) == 1  # the finder's death is no excuse


def test_checks_catch_a_factory_that_makes_token_0_twice(
    pools: list[PoolHandle], tmp_path: Path
) -> None:
    pools.append(pool := start_pool(PoolSpec("p", DuplicateTokens(), max_size=3)))
    outcome = hammer_with_checks(pool, Markers(tmp_path), threads=16, pairs=150)
    assert outcome.errors == []
    print(f"markers saw {len(outcome.markers)}, intervals {outcome.intervals.overlaps()}")
    assert len(outcome.markers) > 0
    assert outcome.intervals.overlaps() > 0
    assert set(outcome.intervals.holds) == {0, 1}  # 0 twice, then 1


def test_checks_catch_a_cache_that_releases_twice(pools: list[PoolHandle], tmp_path: Path) -> None:
    pools.append(pool := start_pool(PoolSpec("p", TokenFactory(), max_size=3)))
    outcome = hammer_with_checks(
        lambda: ParksAndReleases(pool), Markers(tmp_path), threads=8, pairs=150
    )
    assert outcome.errors == []
    print(f"markers saw {len(outcome.markers)}, intervals {outcome.intervals.overlaps()}")
    assert len(outcome.markers) > 0
    assert outcome.intervals.overlaps() > 0


@pytest.mark.parametrize("mutant", ["factory", "cache"])
def test_markers_catch_double_grants_across_worker_processes(tmp_path: Path, mutant: str) -> None:
    rt = Runtime(handle_signals=False)
    try:
        factory = DuplicateTokens() if mutant == "factory" else TokenFactory()
        rt.add_pool(PoolSpec("slots", factory, max_size=3))
        markers, logs = Markers(tmp_path / "markers"), tmp_path / "logs"
        logs.mkdir()
        args = ("slots", 300, str(logs), False, str(markers.dir), mutant == "cache")
        group = rt.spawn_workers(targets.pairs, 3, args=args, restart="transient")
        assert rt.join(group, timeout=60)
    finally:
        rt.shutdown(timeout=5)
    assert wait_until(lambda: len(list(logs.iterdir())) == 3)
    print(f"markers saw {len(markers.overlaps())} overlaps")
    assert len(markers.overlaps()) > 0
