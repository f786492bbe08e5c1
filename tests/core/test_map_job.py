"""MapJob's decisions, driven by hand: chunks, retries one at a time, attempts, outcomes.

And the map errors: what a TaskFailed carries, that it prints its worker's traceback,
pickles, and that MapInterrupted is a KeyboardInterrupt.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

import pytest

import lessor
from lessor.errors import MapInterrupted, RemoteTraceback, TaskFailed
from lessor.holder import report_gone
from lessor.protocol import wire
from lessor.protocol.messages import (
    MAX_TRACEBACK,
    NextTask,
    Task,
    TaskResult,
    decode,
    encode,
)
from lessor.runtime.mapjob import CHUNK_BYTES, MapJob, Outcome, _failed


class Answer:
    """A reply slot, as a worker's WireReply is: ``set`` says whether it was taken."""

    def __init__(self, taken: bool = True) -> None:
        self.value: Any = None
        self.taken = taken

    def set(self, value: Any) -> bool:
        self.value = value
        return self.taken

    def set_exception(self, exc_info: Any = None) -> bool:
        self.value = exc_info[1]
        return True


def ask(job: MapJob, holder: str, taken: bool = True) -> Task:
    reply = Answer(taken)
    job.deliver(NextTask(job.name), reply, holder)
    assert isinstance(reply.value, Task)
    return reply.value


def tell(job: MapJob, holder: str, index: int, value: Any = None, fail: str = "") -> None:
    if fail:
        result = TaskResult(job.name, index, False, None, fail, "app.Err", "Traceback...\n")
    else:
        result = TaskResult(job.name, index, True, value, "")
    job.deliver(result, None, holder)


def outcomes(job: MapJob) -> list[Outcome]:
    found = []
    while not job.outcomes.empty():
        found.append(job.outcomes.get_nowait())
    return found


@pytest.fixture
def jobs() -> Any:
    made: list[MapJob] = []

    def make(items: list[Any], chunksize: int = 1) -> MapJob:
        made.append(MapJob(f"map-{len(made)}", items, chunksize))
        return made[-1]

    yield make
    for job in made:
        job.close()


def test_a_next_task_is_answered_with_a_chunk_of_consecutive_items(jobs: Any) -> None:
    job = jobs(list(range(10)), chunksize=4)
    assert ask(job, "w1") == Task(0, [0, 1, 2, 3])
    assert ask(job, "w2") == Task(4, [4, 5, 6, 7])
    assert ask(job, "w1") == Task(8, [8, 9])
    assert ask(job, "w2") == Task(-1, [])


def test_a_chunk_stays_under_its_byte_budget_whatever_chunksize_says(jobs: Any) -> None:
    item = b"x" * (CHUNK_BYTES // 3)
    job = jobs([item] * 7, chunksize=100)
    sizes = [len(ask(job, "w").items) for _ in range(4)]
    assert sizes == [2, 2, 2, 1]
    big = jobs([b"y" * (wire.MAX_FRAME - 1000)])  # alone in its chunk, it still goes
    assert ask(big, "w").items == [b"y" * (wire.MAX_FRAME - 1000)]


def test_a_leaving_worker_is_answered_with_no_work_and_takes_none(jobs: Any) -> None:
    """A drained worker's last round trip (``more=False``) hands out nothing."""
    job = jobs([1, 2])
    reply = Answer()
    job.deliver(NextTask(job.name, more=False), reply, "w")
    assert reply.value == Task(-1, [])
    assert ask(job, "v") == Task(0, [1])


def test_results_come_back_one_by_one_as_outcomes(jobs: Any) -> None:
    job = jobs([1, 2, 3], chunksize=3)
    ask(job, "w")
    tell(job, "w", 1, 4)
    tell(job, "w", 0, 1)
    tell(job, "w", 0, 99)  # a second answer for it is ignored
    tell(job, "other", 2, 9)  # not its item: ignored
    assert outcomes(job) == [Outcome(1, 4), Outcome(0, 1)]


def test_a_failed_result_is_a_task_failed_with_the_workers_detail(jobs: Any) -> None:
    job = jobs(["a"])
    ask(job, "w")
    tell(job, "w", 0, fail="bad row")
    (outcome,) = outcomes(job)
    error = outcome.error
    assert isinstance(error, TaskFailed) and str(error) == "item 0: app.Err: bad row"
    assert (error.index, error.error_type, error.message) == (0, "app.Err", "bad row")
    assert isinstance(error.__cause__, RemoteTraceback)
    assert error.__cause__.text == error.traceback == "Traceback...\n"


def test_a_dead_workers_chunk_is_handed_out_again_one_item_at_a_time(jobs: Any) -> None:
    """Only the item it was on counts as an attempt: the rest of its chunk never started."""
    job = jobs(list(range(5)), chunksize=4)
    assert ask(job, "worker:a:1") == Task(0, [0, 1, 2, 3])
    tell(job, "worker:a:1", 0, "done")
    report_gone("worker:a:1")  # it died on item 1
    assert ask(job, "worker:b:2") == Task(1, [1])
    report_gone("worker:b:2")  # and its successor died on item 1 too: two attempts
    assert ask(job, "worker:c:3") == Task(2, [2])  # item 2 was never started: no attempt
    report_gone("worker:c:3")
    assert ask(job, "worker:d:4") == Task(2, [2])  # its second attempt
    assert ask(job, "worker:e:5") == Task(3, [3])
    found = outcomes(job)
    assert found[0] == Outcome(0, "done")
    died = found[1].error
    assert isinstance(died, TaskFailed) and died.index == 1
    assert str(died) == "item 1: its worker died, twice" and died.error_type == ""


def test_a_chunk_its_worker_never_got_goes_back_uncounted(jobs: Any) -> None:
    job = jobs(list(range(3)), chunksize=2)
    assert ask(job, "w", taken=False) == Task(0, [0, 1])  # the worker gave up waiting
    assert ask(job, "w") == Task(0, [0])
    assert ask(job, "w") == Task(1, [1])
    report_gone("w")  # on item 0: its first attempt, so it is handed out again
    assert ask(job, "v") == Task(0, [0])


def test_cut_short_cuts_what_is_left_and_a_late_result_still_counts(jobs: Any) -> None:
    job = jobs(list(range(4)), chunksize=1)
    ask(job, "w")
    tell(job, "w", 0, 0)
    ask(job, "w")  # item 1 under way when the group ends
    job.cut_short("no worker left to run it")
    assert ask(job, "v") == Task(-1, [])  # nothing more is handed out
    tell(job, "w", 1, 1)  # a draining worker finished it after all
    found = outcomes(job)
    assert found[0] == Outcome(0, 0)
    cut = {o.index: o for o in found[1:4]}
    assert sorted(cut) == [1, 2, 3] and all(o.cut for o in cut.values())
    assert str(cut[2].error) == "item 2: no worker left to run it"
    assert found[4] == Outcome(1, 1)


def test_task_and_task_result_value_rules() -> None:
    for bad in (lambda: Task(0, []), lambda: Task(-1, [1]), lambda: Task(-2, [])):
        with pytest.raises(ValueError, match="Task"):
            bad()
    with pytest.raises(ValueError, match="ok carries no error"):
        TaskResult("j", 0, True, 1, "oops")
    with pytest.raises(ValueError, match="carries no value"):
        TaskResult("j", 0, False, 1, "oops", "E")
    with pytest.raises(ValueError, match="traceback is over"):
        TaskResult("j", 0, False, None, "x", "E", "t" * (MAX_TRACEBACK + 1))
    result = TaskResult("j", 3, False, None, "x", "E", "tb")
    assert decode(encode(result)) == result
    assert Task.TAG == 12 and TaskResult.TAG == 13


def test_a_huge_error_is_cut_so_its_result_fits_a_frame() -> None:
    """Four-byte characters, the worst case: text and traceback are cut in the middle."""

    def down(depth: int) -> None:
        if depth:
            down(depth - 1)
        raise ValueError("\U0001f4a5" * 3_000_000)

    try:
        down(300)
    except ValueError as exc:
        result = _failed("map-1", 0, exc)
    assert len(wire.frame(wire.Kind.TELL, 1, "map-1", result)) < wire.MAX_FRAME
    assert "characters cut" in result.error and "characters cut" in result.traceback
    assert result.traceback.startswith("Traceback (most recent call last)")
    assert result.traceback.rstrip().endswith("\U0001f4a5")  # its last line, kept
    assert result.error_type == "ValueError"


def test_an_error_text_with_a_lone_surrogate_still_travels() -> None:
    """A surrogate-escaped file name in an error's text is not UTF-8 as it is."""
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")
    try:
        raise ValueError(f"cannot read {name}")
    except ValueError as exc:
        result = _failed("map-1", 0, exc)
    assert wire.parse(wire.frame(wire.Kind.TELL, 1, "map-1", result))[3] == result
    assert result.error_type == "ValueError"
    assert result.error == "cannot read caf\\udce9.txt"


def test_an_uncaught_task_failed_prints_the_workers_traceback() -> None:
    remote = 'Traceback (most recent call last):\n  File "jobs.py", line 3, in f\nValueError: x\n'
    error = TaskFailed("item 2: ValueError: x", "ValueError", "x", remote, 2)
    printed = "".join(traceback.format_exception(error))
    assert 'File "jobs.py", line 3, in f' in printed
    assert "The above exception was the direct cause of the following exception" in printed
    assert printed.rstrip().endswith("TaskFailed: item 2: ValueError: x")


def test_map_errors_pickle_with_what_they_carry() -> None:
    error = TaskFailed("item 2: E: x", "E", "x", "Traceback...", 2)
    back = pickle.loads(pickle.dumps(error))
    assert (str(back), back.error_type, back.message, back.traceback, back.index) == (
        "item 2: E: x", "E", "x", "Traceback...", 2,
    )  # fmt: skip
    assert isinstance(back.__cause__, RemoteTraceback)
    stopped = MapInterrupted("map-1 interrupted", {0: 1}, {2: error}, 3)
    again = pickle.loads(pickle.dumps(stopped))
    assert (again.results, again.total, list(again.failed)) == ({0: 1}, 3, [2])


def test_map_interrupted_is_a_keyboard_interrupt_that_except_exception_lets_through() -> None:
    assert issubclass(MapInterrupted, KeyboardInterrupt)
    assert not issubclass(MapInterrupted, Exception)
    assert lessor.MapInterrupted is MapInterrupted and lessor.RemoteTraceback is RemoteTraceback


def test_worker_index_raises_outside_a_worker() -> None:
    with pytest.raises(lessor.LessorError, match="worker processes started by a Runtime"):
        lessor.worker_index()
    with pytest.raises(lessor.LessorError, match="worker processes started by a Runtime"):
        lessor.worker_count()
