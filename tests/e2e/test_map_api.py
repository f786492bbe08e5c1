"""Runtime.map, imap and imap_unordered on real worker processes, as someone coming from
multiprocessing.Pool would use them: remote errors, chunks, progress, iterators that
start at once and stop their workers however they end, and each worker's index."""

from __future__ import annotations

import gc
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lessor
from lessor import MapTimeout, RemoteTraceback, Runtime, TaskFailed
from tests.support.helpers import wait_until
from tests.workers import map_targets

BOOM = "tests.workers.map_targets.Boom"


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


def groups(runtime: Runtime) -> list[str]:
    return [child["id"] for child in runtime.tree()["children"]]


def no_workers_left(runtime: Runtime) -> bool:
    """No map group in the tree and no watcher thread: everything the map started is gone."""
    watchers = [t for t in threading.enumerate() if t.name.endswith("-watch")]
    return groups(runtime) == [] and watchers == []


# -- remote errors -------------------------------------------------------------------------


def test_a_failed_item_is_a_task_failed_with_the_workers_type_message_and_traceback(
    runtime: Runtime,
) -> None:
    results = runtime.map(map_targets.square, [1, -2, 3], workers=1, return_exceptions=True)
    assert results[0] == 1 and results[2] == 9
    error = results[1]
    assert isinstance(error, TaskFailed)
    assert str(error) == f"item 1: {BOOM}: negative: -2"
    assert (error.index, error.error_type, error.message) == (1, BOOM, "negative: -2")
    assert "in explode" in error.traceback and "in square" in error.traceback
    assert "lessor/runtime/mapjob.py" not in error.traceback  # the user's frames only
    assert isinstance(error.__cause__, RemoteTraceback)
    assert error.__cause__.text == error.traceback
    with pytest.raises(TaskFailed, match=f"item 1: {BOOM}: negative: -2") as raised:
        runtime.map(map_targets.square, [1, -2, -3], workers=2)  # the first in order
    assert raised.value.index == 1


def test_an_error_too_big_for_a_frame_is_cut_and_still_arrives(runtime: Runtime) -> None:
    (error,) = runtime.map(map_targets.huge_error, [3_000_000], workers=1, return_exceptions=True)
    assert isinstance(error, TaskFailed) and error.error_type == "ValueError"
    assert "characters cut" in error.message and "characters cut" in error.traceback
    assert error.traceback.rstrip().endswith("e")  # the exception line is kept


def test_an_item_whose_worker_dies_twice_fails_alone_and_its_chunk_is_done(
    runtime: Runtime,
) -> None:
    items = [[1, False], [2, True], [3, False], [4, False]]
    results = runtime.map(map_targets.die_on, items, workers=1, chunksize=4,
                          return_exceptions=True)  # fmt: skip
    assert [results[0], results[2], results[3]] == [1, 9, 16]
    assert isinstance(results[1], TaskFailed) and results[1].index == 1
    assert "its worker died, twice" in str(results[1])


# -- chunks and progress -------------------------------------------------------------------


def test_a_chunk_costs_one_round_trip_and_each_result_is_told_on_its_own(
    runtime: Runtime,
) -> None:
    """One worker counts the frames it sent before each item: per item one tell, and
    one NextTask per chunk of 5 (chunksize 1 would be two frames per item)."""
    sent = runtime.map(map_targets.frames, list(range(12)), workers=1, chunksize=5)
    asks = [sent[i] - sent[0] - i for i in range(12)]  # NextTasks since the first item
    assert asks == [0] * 5 + [1] * 5 + [2] * 2
    one_by_one = runtime.map(map_targets.frames, list(range(4)), workers=1, chunksize=1)
    assert [n - one_by_one[0] for n in one_by_one] == [0, 2, 4, 6]


def test_map_chunks_like_pool_map_by_default(runtime: Runtime) -> None:
    """12 items, 1 worker: ceil(12 / 4) = 3 items a chunk."""
    sent = runtime.map(map_targets.frames, list(range(12)), workers=1)
    assert [sent[i] - sent[0] - i for i in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_progress_is_called_after_each_item_in_the_callers_thread(runtime: Runtime) -> None:
    calls: list[tuple[int, int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total, threading.get_ident()))

    results = runtime.map(map_targets.square, [1, 2, -3, 4, 5], workers=2, chunksize=2,
                          progress=progress, return_exceptions=True)  # fmt: skip
    assert isinstance(results[2], TaskFailed)
    assert [(done, total) for done, total, _ in calls] == [(n, 5) for n in range(1, 6)]
    assert {thread for _, _, thread in calls} == {threading.get_ident()}


def test_bad_options_are_refused_before_anything_starts(runtime: Runtime) -> None:
    for options, error in [
        ({"workers": 0}, ValueError),
        ({"chunksize": 0}, ValueError),
        ({"chunksize": 1.5}, TypeError),
        ({"timeout": -1}, ValueError),
    ]:
        with pytest.raises(error):
            runtime.map(map_targets.square, [1], **options)
        with pytest.raises(error):
            runtime.imap(map_targets.square, [1], **options)
    assert runtime.events() == []


# -- imap and imap_unordered ---------------------------------------------------------------


def test_imap_starts_at_once_and_yields_in_order(runtime: Runtime, tmp_path: Path) -> None:
    items = [[x, str(tmp_path), None] for x in range(6)]
    results = runtime.imap(map_targets.mark_and_wait, items, workers=2)
    assert results.total == 6
    # Before the first next(): the workers already run the items.
    assert wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 6, timeout=30)
    assert list(results) == [x * x for x in range(6)]
    assert wait_until(lambda: no_workers_left(runtime), timeout=10)


def test_imap_unordered_yields_as_items_finish(runtime: Runtime, tmp_path: Path) -> None:
    """Item 0 waits for a file made only once items 1-3 have come out: completion order."""
    items = [[0, str(tmp_path), "go"], *[[x, str(tmp_path), None] for x in (1, 2, 3)]]
    with runtime.imap_unordered(map_targets.mark_and_wait, items, workers=2) as results:
        first = sorted(next(results) for _ in range(3))
        assert first == [1, 4, 9]
        (tmp_path / "go").touch()
        assert list(results) == [0]


def test_a_failed_item_raises_when_reached_and_ends_the_iterator(
    runtime: Runtime, tmp_path: Path
) -> None:
    items = [[x, str(tmp_path), None] for x in (1, -2, 3, 4)]
    results = runtime.imap(map_targets.mark_and_wait, items, workers=2)
    assert next(results) == 1
    with pytest.raises(TaskFailed, match=f"item 1: {BOOM}: negative: -2"):
        next(results)
    assert groups(runtime) == []  # stopped before the error reached us
    with pytest.raises(StopIteration):
        next(results)
    unordered = runtime.imap_unordered(map_targets.square, [-1], workers=1)
    with pytest.raises(TaskFailed, match="item 0"):
        next(unordered)
    assert wait_until(lambda: no_workers_left(runtime), timeout=10)


def test_return_exceptions_yields_the_failure_in_its_place(runtime: Runtime) -> None:
    got = list(runtime.imap(map_targets.square, [1, -2, 3], return_exceptions=True))
    assert got[0] == 1 and got[2] == 9
    assert isinstance(got[1], TaskFailed) and got[1].index == 1
    unordered = list(runtime.imap_unordered(map_targets.square, [1, -2, 3],
                                            return_exceptions=True))  # fmt: skip
    assert sorted(r for r in unordered if isinstance(r, int)) == [1, 9]
    assert [r.index for r in unordered if isinstance(r, TaskFailed)] == [1]


def test_breaking_out_of_the_loop_stops_the_workers(runtime: Runtime, tmp_path: Path) -> None:
    """The other item never finishes (it waits for a file no one makes): only the stop
    (drain, then kill) ends its worker."""
    items = [[1, str(tmp_path), None], [2, str(tmp_path), "never"], [3, str(tmp_path), None]]
    for result in runtime.imap_unordered(map_targets.mark_and_wait, items, workers=2):
        assert result in (1, 9)
        break
    assert wait_until(lambda: no_workers_left(runtime), timeout=10)


def test_an_iterator_dropped_in_a_reference_cycle_is_stopped_by_its_watcher(
    runtime: Runtime, tmp_path: Path
) -> None:
    items = [[1, str(tmp_path), "never"], [2, str(tmp_path), "never"]]
    cycle: list[Any] = [runtime.imap(map_targets.mark_and_wait, items, workers=2)]
    cycle.append(cycle)
    assert wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 2, timeout=30)
    del cycle
    gc.collect()  # finalized here, by whichever thread runs the collection
    assert wait_until(lambda: no_workers_left(runtime), timeout=10)


def test_close_and_a_with_block_stop_the_workers_before_returning(
    runtime: Runtime, tmp_path: Path
) -> None:
    items = [[1, str(tmp_path), "never"]]
    results = runtime.imap(map_targets.mark_and_wait, items, workers=1)
    assert wait_until((tmp_path / "started-1").exists, timeout=30)
    results.close()
    assert no_workers_left(runtime)
    results.close()  # again: nothing to do
    with pytest.raises(StopIteration):
        next(results)
    with runtime.imap(map_targets.square, [1, 2]) as more:
        assert next(more) == 1
    assert no_workers_left(runtime)


def test_imap_times_out_in_next_and_stops_its_workers(runtime: Runtime, tmp_path: Path) -> None:
    items = [[1, str(tmp_path), None], [2, str(tmp_path), "never"]]
    results = runtime.imap(map_targets.mark_and_wait, items, workers=1, timeout=3)
    assert next(results) == 1
    with pytest.raises(MapTimeout, match="did not finish in 3s"):
        next(results)
    assert no_workers_left(runtime)


def test_an_empty_imap_is_exhausted_at_once(runtime: Runtime) -> None:
    assert list(runtime.imap(map_targets.square, [])) == []
    assert list(runtime.imap_unordered(map_targets.square, [])) == []
    assert runtime.events() == []


# -- worker_index ----------------------------------------------------------------------------


def test_each_worker_knows_its_slot_and_a_restarted_one_keeps_it(
    runtime: Runtime, tmp_path: Path
) -> None:
    group = runtime.spawn_workers(map_targets.report_index, 3, args=(str(tmp_path),))
    assert runtime.join(group, timeout=60)
    reports = [p.read_text() for p in tmp_path.glob("*.*") if p.name != "failed-once"]
    assert sorted(reports) == ["0 3", "0 3", "1 3", "2 3"]  # slot 0 twice: failed, restarted
    restarted = [e.node for e in runtime.events() if e.kind == "restarted"]
    assert restarted == [f"{group.path}.0.2"]  # <group path>.<slot>.<incarnation>
    with pytest.raises(lessor.LessorError, match="worker processes"):
        lessor.worker_index()


def test_map_workers_have_indices_too(runtime: Runtime, tmp_path: Path) -> None:
    items = [[x, str(tmp_path)] for x in range(2)]
    found = runtime.map(map_targets.where, items, workers=2, chunksize=1)
    assert [row[0] for row in found] == [0, 1]
    assert sorted(row[1] for row in found) == [0, 1] and {row[2] for row in found} == {2}
    assert len({row[3] for row in found}) == 2


def test_a_manager_queue_passed_in_args_reaches_every_worker(runtime: Runtime) -> None:
    """docs/workers.md's recipe: a queue made before spawning is passed in ``args``."""
    with multiprocessing.get_context("spawn").Manager() as manager:
        queue = manager.Queue()
        group = runtime.spawn_workers(map_targets.put_index, 2, args=(queue,))
        assert runtime.join(group, timeout=60)
        got = sorted(queue.get(timeout=10) for _ in range(2))
    assert got == [[0, 2], [1, 2]]
