"""BatchCore, the pure batch-processor core: focused examples, then a model.

The examples drive a core by hand with a fake clock (``now`` is a parameter) and
carry out its decisions: a ``Run`` is "processed" by calling ``done`` with a result
list, a raised exception, or a broken result.

``BatchMachine`` is a hypothesis state machine that plays the actor. It keeps its
own books, written from the contract in ``lessor/core/batch.py``'s docstring:
items are accepted FIFO up to ``max_pending`` (a waiting submission holds back every
later one), batched in acceptance order, run while a slot is free (a retrying batch
keeps its slot, bisection halves go first), retried with doubling backoff, split
when out of attempts, and answered once per submission when every item has its
outcome. The processor's result for an item is derived from the item (``("ok",
item)``), so an outcome given to the wrong item shows. After every step the core's
queue, batches, counters and ``next_deadline`` must agree with the books.

The mutant tests at the end show that the machine catches broken cores.
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

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

from lessor.core.batch import (
    Answer,
    BatchCore,
    BatchSettings,
    BatchTotals,
    Decision,
    Finished,
    FlushDone,
    FlushReason,
    ProcessorError,
    Run,
    _Batch,
    _Entry,
    _Submission,
    check_outcome,
)
from lessor.errors import Backpressure, LessorError
from tests.support.mutants import assert_catches, assert_passes

Item = tuple[int, int]  # (submission number, index in it): unique, hashable

# -- helpers -------------------------------------------------------------------------------


def make(**kw: Any) -> BatchCore:
    return BatchCore(BatchSettings(**kw))


def ok(items: list[Any]) -> list[Any]:
    """What a processor that succeeds returns: a result derived from each item."""
    return [("ok", x) for x in items]


def runs(out: list[Decision]) -> list[Run]:
    return [d for d in out if isinstance(d, Run)]


def one_run(out: list[Decision]) -> Run:
    found = runs(out)
    assert len(found) == 1, out
    return found[0]


def answers(out: list[Decision]) -> dict[Any, list[Any]]:
    found = [d for d in out if isinstance(d, Answer)]
    by_ticket = {d.ticket: d.outcomes for d in found}
    assert len(by_ticket) == len(found), f"a ticket answered twice: {found}"
    return by_ticket


def finished(out: list[Decision]) -> list[Finished]:
    return [d for d in out if isinstance(d, Finished)]


def flush_dones(out: list[Decision]) -> list[Any]:
    return [d.ticket for d in out if isinstance(d, FlushDone)]


class Poison(Exception):
    pass


# -- size, time, manual and shutdown flushes ----------------------------------------------


def test_a_full_batch_runs_at_once_by_size() -> None:
    core = make(max_batch_size=3, max_wait=10.0)
    assert core.submit(0.0, "a", "h", ["a1", "a2"], 30.0) == []
    assert core.pending == 2
    out = core.submit(0.0, "b", "h", ["b1", "b2"], 30.0)
    assert out == [Run(1, ["a1", "a2", "b1"], 1, "size")]
    assert core.pending == 1 and core.in_flight_items == 3
    assert core.totals.reasons == {"size": 1}
    assert core.totals.accepted == 4


def test_a_submission_bigger_than_a_batch_is_cut_into_batches() -> None:
    core = make(max_batch_size=2, max_wait=10.0, max_in_flight=3)
    out = core.submit(0.0, "t", "h", [1, 2, 3, 4, 5], 30.0)
    assert runs(out) == [Run(1, [1, 2], 1, "size"), Run(2, [3, 4], 1, "size")]
    assert core.pending == 1
    out = core.done(0.0, 2, ok([3, 4]))
    assert answers(out) == {}  # items 1, 2 and 5 have no outcome yet
    out = core.done(0.0, 1, ok([1, 2]))
    assert answers(out) == {}
    tick = core.tick(10.0)
    assert tick == [Run(3, [5], 1, "time")]
    assert answers(core.done(10.0, 3, ok([5]))) == {"t": ok([1, 2, 3, 4, 5])}


def test_a_partial_batch_runs_once_its_oldest_item_waited_max_wait() -> None:
    core = make(max_batch_size=10, max_wait=0.5)
    assert core.next_deadline() is None
    assert core.submit(1.0, "a", "h", ["a"], 30.0) == []
    assert core.next_deadline() == 1.5  # the oldest queued item's acceptance + max_wait
    assert core.submit(1.25, "b", "h", ["b"], 30.0) == []
    assert core.next_deadline() == 1.5  # still the oldest one's
    assert core.tick(1.375) == []
    assert core.pending == 2
    out = core.tick(1.5)
    assert out == [Run(1, ["a", "b"], 1, "time")]
    assert core.totals.reasons == {"time": 1}
    assert core.next_deadline() is None


def test_a_submit_past_max_wait_runs_the_aged_batch_without_a_tick() -> None:
    core = make(max_batch_size=10, max_wait=0.5)
    core.submit(0.0, "a", "h", ["a"], 30.0)
    out = core.submit(0.75, "b", "h", ["b"], 30.0)  # the actor's timer was late
    assert out == [Run(1, ["a", "b"], 1, "time")]


def test_max_wait_counts_from_acceptance_not_from_submission() -> None:
    core = make(max_batch_size=5, max_wait=0.5, max_pending=1, max_in_flight=2)
    core.submit(0.0, "a", "h", ["a"], 30.0)
    assert core.submit(0.0, "b", "h", ["b"], 30.0) == []  # no room: b waits
    assert core.next_deadline() == 0.5
    assert core.tick(0.5) == [Run(1, ["a"], 1, "time")]  # b is accepted now, at 0.5
    assert core.pending == 1 and core.waiting_items == 0
    assert core.next_deadline() == 1.0
    assert core.tick(0.75) == []
    assert core.tick(1.0) == [Run(2, ["b"], 1, "time")]


def test_the_time_deadline_is_none_while_no_slot_is_free() -> None:
    core = make(max_batch_size=2, max_wait=0.5, max_in_flight=1)
    core.submit(0.0, "a", "h", ["a1", "a2"], 30.0)  # runs by size
    core.submit(0.0, "b", "h", ["b"], 30.0)
    assert core.pending == 1
    assert core.next_deadline() is None  # done() will schedule it
    assert core.tick(5.0) == []  # no slot: nothing starts
    out = core.done(5.0, 1, ok(["a1", "a2"]))
    assert runs(out) == [Run(2, ["b"], 1, "time")]


def test_tick_at_next_deadline_starts_the_aged_batch() -> None:
    """``next_deadline`` is "the next time tick has something to do": ticking exactly
    then must start the batch. BUG: it returns ``accepted_at + max_wait`` while ``tick``
    tests ``now - accepted_at >= max_wait``; with floats the two disagree (0.7 + 0.1
    - 0.7 < 0.1), so a tick at the deadline does nothing and the deadline stays in the
    past."""
    core = make(max_batch_size=10, max_wait=0.1)
    core.submit(0.7, "a", "h", ["a"], 30.0)
    due = core.next_deadline()
    assert due is not None
    out = core.tick(due)
    assert out == [Run(1, ["a"], 1, "time")], f"tick({due!r}) did nothing"


def test_flush_runs_every_accepted_item_and_answers_once_all_have_outcomes() -> None:
    core = make(max_batch_size=2, max_wait=10.0, max_in_flight=1)
    core.submit(0.0, "a", "h", ["a1"], 30.0)
    core.submit(0.0, "b", "h", ["b1", "b2", "b3", "b4"], 30.0)  # a1 b1 run by size
    assert core.pending == 3
    out = core.flush(0.0, "f")
    assert out == []  # nothing has an outcome yet, no slot is free
    out = core.submit(0.0, "late", "h", ["z"], 30.0)  # accepted after the flush
    assert core.pending == 4
    out = core.done(1.0, 1, ok(["a1", "b1"]))
    assert answers(out) == {"a": ok(["a1"])}
    assert out[-1] == Run(2, ["b2", "b3"], 1, "size")
    assert flush_dones(out) == []
    out = core.done(1.0, 2, ok(["b2", "b3"]))
    assert runs(out) == [Run(3, ["b4", "z"], 1, "size")]
    assert flush_dones(out) == []
    out = core.done(1.0, 3, ok(["b4", "z"]))
    assert flush_dones(out) == ["f"]
    assert answers(out) == {"b": ok(["b1", "b2", "b3", "b4"]), "late": ok(["z"])}


def test_flush_does_not_wait_for_items_accepted_after_it() -> None:
    core = make(max_batch_size=10, max_wait=10.0)
    core.submit(0.0, "a", "h", ["a"], 30.0)
    assert core.flush(0.0, "f") == [Run(1, ["a"], 1, "manual")]
    core.submit(0.0, "b", "h", ["b"], 30.0)  # after the flush: waits for its age
    assert core.pending == 1
    out = core.done(0.5, 1, ok(["a"]))
    assert flush_dones(out) == ["f"]
    assert runs(out) == []  # b was accepted after the flush
    assert core.totals.reasons == {"manual": 1}


def test_flush_with_nothing_outstanding_is_done_at_once() -> None:
    core = make()
    assert core.flush(0.0, "f1") == [FlushDone("f1")]
    core.submit(0.0, "a", "h", ["a"], 30.0)
    run = one_run(core.flush(0.0, "f2"))
    out = core.done(0.0, run.run, ok(["a"]))
    assert flush_dones(out) == ["f2"]
    assert core.flush(0.0, "f3") == [FlushDone("f3")]


def test_two_flushes_each_answered_when_their_items_are_done() -> None:
    core = make(max_batch_size=10, max_wait=10.0, max_in_flight=2)
    core.submit(0.0, "a", "h", ["a"], 30.0)
    r1 = one_run(core.flush(0.0, "f1"))
    core.submit(0.0, "b", "h", ["b"], 30.0)
    r2 = one_run(core.flush(0.0, "f2"))
    assert (r1.items, r2.items) == (["a"], ["b"])
    out = core.done(0.0, r2.run, ok(["b"]))
    assert flush_dones(out) == []  # f2 also waits for a
    out = core.done(0.0, r1.run, ok(["a"]))
    assert sorted(flush_dones(out)) == ["f1", "f2"]


def test_flush_does_not_count_items_still_waiting_for_room() -> None:
    core = make(max_batch_size=1, max_pending=1, max_wait=10.0)
    core.submit(0.0, "a", "h", ["a1", "a2", "a3"], 30.0)  # a1 runs, a2 queued, a3 waits
    assert core.waiting_items == 1
    core.flush(0.0, "f")
    out = core.done(0.0, 1, ok(["a1"]))  # a2 runs, a3 accepted
    assert flush_dones(out) == []
    out = core.done(0.0, 2, ok(["a2"]))
    assert flush_dones(out) == ["f"]  # a3 was not accepted when the flush came


def test_drain_runs_everything_at_once_with_reason_shutdown() -> None:
    core = make(max_batch_size=10, max_wait=10.0, max_in_flight=1)
    core.submit(0.0, "a", "h", ["a1", "a2"], 30.0)
    assert core.drain(0.0) == [Run(1, ["a1", "a2"], 1, "shutdown")]
    core.submit(0.0, "b", "h", ["b"], 30.0)  # no slot: waits for the run
    out = core.done(0.0, 1, ok(["a1", "a2"]))
    assert runs(out) == [Run(2, ["b"], 1, "shutdown")]
    assert core.totals.reasons == {"shutdown": 2}


# -- failures ------------------------------------------------------------------------------


def test_a_per_item_error_is_final_for_that_item_only() -> None:
    core = make(max_batch_size=3, max_attempts=3)
    core.submit(0.0, "a", "h", ["a1", "a2"], 30.0)
    run = one_run(core.submit(0.0, "b", "h", ["b1"], 30.0))
    bad = ValueError("a2 is bad")
    out = core.done(1.0, run.run, [("ok", "a1"), bad, ("ok", "b1")])
    (fin,) = finished(out)
    assert fin == Finished(run.run, 3, "ok", None, [("a2", bad)])
    got = answers(out)
    assert got["a"][0] == ("ok", "a1") and got["a"][1] is bad
    assert got["b"] == [("ok", "b1")]
    assert runs(out) == [] and core.retrying == []
    t = core.totals
    assert (t.retries, t.completed, t.failed, t.batches, t.batched_items) == (0, 3, 1, 1, 3)
    assert core.idle


def test_a_raise_retries_with_doubling_backoff_capped_and_keeps_the_slot() -> None:
    core = make(
        max_batch_size=1, max_in_flight=1, max_attempts=4, retry_backoff=0.5,
        retry_backoff_max=1.5, bisect=False,
    )  # fmt: skip
    run = one_run(core.submit(0.0, "a", "h", ["a"], 30.0))
    assert run == Run(1, ["a"], 1, "size")
    assert core.submit(0.0, "b", "h", ["b"], 30.0) == []  # the slot is taken
    boom = RuntimeError("boom")
    expected_due = [0.5, 1.5, 3.0]  # backoff 0.5, then 1.0, then 1.5 (2.0 capped)
    now = 0.0
    for attempt, due in enumerate(expected_due, start=1):
        out = core.done(now, run.run, boom)
        assert out == [Finished(run.run, 1, "retry", boom, [])]
        assert core.next_deadline() == due
        assert core.in_flight_items == 1 and core.pending == 1
        assert core.tick(due - 0.25) == []  # not yet; b still waits for the slot
        out = core.tick(due)
        run = one_run(out)
        assert run.items == ["a"] and run.attempt == attempt + 1 and run.reason == "retry"
        now = due
    out = core.done(now, run.run, boom)  # the 4th run failed: no more attempts
    assert finished(out) == [Finished(run.run, 1, "failed", boom, [("a", boom)])]
    assert answers(out) == {"a": [boom]}
    assert runs(out) == [Run(run.run + 1, ["b"], 1, "size")]  # the slot is free
    assert core.totals.retries == 3 and core.totals.failed == 1


def test_a_retry_that_succeeds_answers_with_its_results() -> None:
    core = make(max_batch_size=2, retry_backoff=0.25, max_attempts=2)
    run = one_run(core.submit(0.0, "a", "h", ["a1", "a2"], 30.0))
    core.done(0.0, run.run, OSError("down"))
    retry = one_run(core.tick(0.25))
    assert retry.run != run.run and retry.attempt == 2
    out = core.done(0.25, retry.run, ok(["a1", "a2"]))
    assert answers(out) == {"a": ok(["a1", "a2"])}
    assert core.totals.retries == 1 and core.totals.failed == 0
    assert core.totals.batches == 2 and core.totals.batched_items == 4


def test_max_attempts_one_means_no_retry() -> None:
    core = make(max_batch_size=1, max_attempts=1, bisect=True)
    run = one_run(core.submit(0.0, "a", "h", ["a"], 30.0))
    boom = RuntimeError()
    out = core.done(0.0, run.run, boom)
    assert finished(out)[0].result == "failed"  # one item: nothing to split
    assert answers(out) == {"a": [boom]}
    assert core.totals.retries == 0


@pytest.mark.parametrize(
    ("outcome", "got"),
    [
        ([("ok", 1)], "1 results"),
        ([("ok", 1), ("ok", 2), ("ok", 3)], "3 results"),
        ([], "0 results"),
        ((("ok", 1), ("ok", 2)), "tuple"),
        (None, "NoneType"),
        ({"a": 1, "b": 2}, "dict"),
    ],
    ids=["short", "long", "empty", "tuple", "none", "dict"],
)
def test_a_wrong_result_is_a_processor_error_treated_like_a_raise(outcome: Any, got: str) -> None:
    core = make(max_batch_size=2, max_attempts=2, retry_backoff=0.25, bisect=False)
    run = one_run(core.submit(0.0, "a", "h", [1, 2], 30.0))
    out = core.done(0.0, run.run, outcome)
    (fin,) = finished(out)
    assert fin.result == "retry" and isinstance(fin.error, ProcessorError)
    assert str(fin.error) == f"the processor must return a list of 2 results, got {got}"
    retry = one_run(core.tick(0.25))
    out = core.done(0.25, retry.run, outcome)
    (fin,) = finished(out)
    assert fin.result == "failed" and isinstance(fin.error, ProcessorError)
    outcomes = answers(out)["a"]
    assert outcomes == [fin.error, fin.error]
    assert all(o is fin.error for o in outcomes)


def test_check_outcome() -> None:
    boom = KeyError("k")
    assert check_outcome(boom, 3) is boom
    results = [1, ValueError(), 3]
    assert check_outcome(results, 3) is results
    assert isinstance(check_outcome([1], 3), ProcessorError)
    assert isinstance(check_outcome("abc", 3), ProcessorError)  # a str is no list
    assert isinstance(ProcessorError("x"), LessorError)


def drive(core: BatchCore, now: float, out: list[Decision], poison: set[Any]) -> dict[str, Any]:
    """Carry out runs with a processor that raises on a poison item, ticking to each
    retry, until nothing is left; returns what was seen."""
    todo: deque[Run] = deque(runs(out))
    seen: dict[str, Any] = {"runs": [], "answers": answers(out), "now": now}
    while todo or core.retrying:
        if not todo:
            due = core.next_deadline()
            assert due is not None and due > now
            now = due
            todo.extend(runs(core.tick(now)))
            continue
        run = todo.popleft()
        seen["runs"].append(run)
        bad = [x for x in run.items if x in poison]
        outcome: Any = Poison(f"poisoned by {bad}") if bad else ok(run.items)
        out = core.done(now, run.run, outcome)
        todo.extend(runs(out))
        seen["answers"].update(answers(out))
    seen["now"] = now
    return seen


def test_bisection_isolates_a_poison_item() -> None:
    core = make(max_batch_size=8, max_attempts=2, retry_backoff=0.25, max_in_flight=1)
    items = list(range(8))
    seen = drive(core, 0.0, core.submit(0.0, "a", "h", items, 30.0), poison={5})
    (outcomes,) = seen["answers"].values()
    for x, got in zip(items, outcomes, strict=True):
        if x == 5:
            assert isinstance(got, Poison) and str(got) == "poisoned by [5]"
        else:
            assert got == ("ok", x)
    # 2 runs of all 8, then [0-3] ok, [4-7] fails, [4,5] fails, [6,7] ok, [4] ok, [5] fails
    assert [r.items for r in seen["runs"]] == [
        items, items, [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]
    ]  # fmt: skip
    assert [r.reason for r in seen["runs"]] == ["size", "retry"] + ["bisect"] * 6
    assert all(r.attempt == 1 for r in seen["runs"][2:])  # a half runs once
    t = core.totals
    assert (t.bisections, t.retries, t.failed, t.completed) == (3, 1, 1, 8)
    assert core.idle


def test_bisection_with_two_poison_items_and_many_good_ones() -> None:
    core = make(max_batch_size=32, max_attempts=1, max_in_flight=1)
    items = list(range(32))
    seen = drive(core, 0.0, core.submit(0.0, "a", "h", items, 30.0), poison={3, 17})
    (outcomes,) = seen["answers"].values()
    for x, got in zip(items, outcomes, strict=True):
        assert isinstance(got, Poison) if x in (3, 17) else got == ("ok", x)
    assert len(seen["runs"]) <= 1 + 2 * 2 * 5  # 1 + (two halves per level) per poison
    first_seen: list[int] = []
    for r in seen["runs"]:
        first_seen += [x for x in r.items if x not in first_seen]
    assert first_seen == items  # max_in_flight=1: the processor sees them in order


def test_without_bisect_the_whole_batch_fails() -> None:
    core = make(max_batch_size=4, max_attempts=2, retry_backoff=0.25, bisect=False)
    core.submit(0.0, "a", "h", [1, 2], 30.0)
    out = core.submit(0.0, "b", "h", [3, 4], 30.0)
    seen = drive(core, 0.0, out, poison={2})
    assert len(seen["runs"]) == 2
    got = seen["answers"]
    assert set(got) == {"a", "b"}
    errors = got["a"] + got["b"]
    assert all(isinstance(e, Poison) for e in errors)
    assert len({id(e) for e in errors}) == 1  # the last run's exception, for every item
    assert core.totals.bisections == 0 and core.totals.failed == 4


# -- backpressure --------------------------------------------------------------------------


def test_items_beyond_max_pending_wait_in_order_and_are_admitted_partially() -> None:
    core = make(max_batch_size=1, max_pending=2, max_in_flight=1, max_wait=10.0)
    out = core.submit(0.0, "a", "h", ["a1", "a2", "a3"], 30.0)
    assert out == [Run(1, ["a1"], 1, "size")]
    assert core.pending == 2 and core.waiting_items == 0
    assert core.submit(0.0, "b", "h", ["b1", "b2"], 1.0) == []
    assert core.submit(0.0, "c", "h", ["c1"], 5.0) == []  # held back behind b
    assert core.waiting_items == 3 and core.totals.accepted == 3
    assert core.next_deadline() == 1.0  # b's deadline
    out = core.done(0.5, 1, ok(["a1"]))
    assert runs(out) == [Run(2, ["a2"], 1, "size")]
    assert core.waiting_items == 2  # b1 accepted; b2 and c1 still wait
    assert [core._item(e) for e in core.queue] == ["a3", "b1"]
    out = core.tick(1.0)  # b's time is up: b2 is refused, b1 was accepted and will run
    assert out == []
    assert core.waiting_items == 1 and core.totals.backpressure == 1
    out = core.done(1.0, 2, ok(["a2"]))
    assert runs(out) == [Run(3, ["a3"], 1, "size")]
    assert [core._item(e) for e in core.queue] == ["b1", "c1"]
    out = core.done(1.0, 3, ok(["a3"]))
    assert answers(out) == {"a": ok(["a1", "a2", "a3"])}
    out = core.done(1.0, 4, ok(["b1"]))
    (b,) = answers(out).values()
    assert b[0] == ("ok", "b1") and isinstance(b[1], Backpressure)
    assert "max_pending=2" in str(b[1])
    out = core.done(1.0, 5, ok(["c1"]))
    assert answers(out) == {"c": ok(["c1"])}
    t = core.totals
    assert (t.accepted, t.completed, t.failed, t.backpressure) == (5, 6, 1, 1)


def test_a_submission_refused_whole_is_answered_at_the_tick() -> None:
    core = make(max_batch_size=5, max_pending=1, max_in_flight=1, max_wait=10.0)
    core.submit(0.0, "a", "h", ["a"], 30.0)  # queued (max_batch_size=5)
    assert core.submit(0.0, "b", "h", ["b1", "b2"], 2.0) == []
    assert core.next_deadline() == 2.0
    assert core.tick(1.75) == []
    out = core.tick(2.0)
    (b,) = answers(out).values()
    assert len(b) == 2 and all(isinstance(e, Backpressure) for e in b)
    assert core.waiting_items == 0 and core.totals.backpressure == 2
    assert core.totals.accepted == 1
    assert core.next_deadline() == 10.0  # a's age


def test_a_refused_submission_no_longer_holds_back_the_next_one() -> None:
    core = make(max_batch_size=5, max_pending=2, max_in_flight=1, max_wait=10.0)
    core.submit(0.0, "a", "h", ["a"], 30.0)
    core.submit(0.0, "b", "h", ["b1", "b2", "b3"], 1.0)  # b1 accepted, b2 b3 wait
    core.submit(0.0, "c", "h", ["c"], 30.0)  # waits behind b
    assert core.pending == 2 and core.waiting_items == 3
    assert core.tick(1.0) == []  # b2 b3 refused; still no room for c
    assert core.waiting_items == 1 and core.totals.backpressure == 2
    assert core.tick(10.0) == [Run(1, ["a", "b1"], 1, "time")]
    assert [core._item(e) for e in core.queue] == ["c"]  # room: c is accepted
    assert core.waiting_items == 0


def test_a_submit_with_timeout_zero_is_refused_at_the_next_tick() -> None:
    core = make(max_batch_size=5, max_pending=1, max_wait=10.0)
    core.submit(0.0, "a", "h", ["a"], 30.0)
    assert core.submit(0.0, "b", "h", ["b"], 0.0) == []
    (b,) = answers(core.tick(0.0)).values()
    assert isinstance(b[0], Backpressure)


# -- holders, restarts, the end ------------------------------------------------------------


def test_holder_gone_still_runs_accepted_items_but_drops_their_answer() -> None:
    core = make(max_batch_size=2, max_pending=2, max_in_flight=1, max_wait=10.0)
    run = one_run(core.submit(0.0, "a", "dead", ["a1", "a2"], 30.0))
    core.submit(0.0, "b", "dead", ["b1", "b2", "b3", "b4"], 30.0)  # b1 b2 queued
    core.submit(0.0, "c", "alive", ["c1"], 30.0)
    assert core.waiting_items == 3
    core.holder_gone("dead")
    assert core.waiting_items == 1  # b3 b4 dropped, c1 still waits
    assert core.pending == 2  # b1 b2 still run
    assert core.totals.results_dropped == 4  # a1 a2 b1 b2
    out = core.done(0.0, run.run, ok(["a1", "a2"]))
    assert answers(out) == {}
    run = one_run(out)
    assert run.items == ["b1", "b2"]
    out = core.done(0.0, run.run, ok(["b1", "b2"]))
    assert answers(out) == {}
    assert core.totals.completed == 4 and core.totals.failed == 0
    run = one_run(core.tick(10.0))
    assert run.items == ["c1"]
    assert answers(core.done(10.0, run.run, ok(["c1"]))) == {"c": ok(["c1"])}
    assert core.idle


def test_holder_gone_with_everything_waiting_drops_it_all() -> None:
    core = make(max_batch_size=5, max_pending=1, max_wait=10.0)
    core.submit(0.0, "a", "alive", ["a"], 30.0)
    core.submit(0.0, "b", "dead", ["b1", "b2"], 5.0)
    core.holder_gone("dead")
    assert core.waiting_items == 0 and core.totals.results_dropped == 0
    assert core.next_deadline() == 10.0  # b's deadline is gone
    assert core.tick(5.0) == []  # and no Backpressure answer for it
    assert core.totals.backpressure == 0


def test_holder_gone_for_a_retrying_and_a_finished_submission() -> None:
    core = make(max_batch_size=2, max_in_flight=2, retry_backoff=0.5)
    r1 = one_run(core.submit(0.0, "a", "dead", ["a1", "a2"], 30.0))
    r2 = one_run(core.submit(0.0, "b", "dead", ["b1", "b2"], 30.0))
    answers(core.done(0.0, r2.run, ok(["b1", "b2"])))
    core.done(0.0, r1.run, RuntimeError())  # a retries
    core.holder_gone("dead")
    assert core.totals.results_dropped == 2
    retry = one_run(core.tick(0.5))
    assert answers(core.done(0.5, retry.run, ok(["a1", "a2"]))) == {}
    assert core.idle


def test_restarted_runs_the_running_batches_again_and_ignores_the_old_runs() -> None:
    core = make(max_batch_size=2, max_in_flight=2, retry_backoff=0.5, max_attempts=3)
    r1 = one_run(core.submit(0.0, "a", "h", ["a1", "a2"], 30.0))
    r2 = one_run(core.submit(0.0, "b", "h", ["b1", "b2"], 30.0))
    core.done(0.0, r2.run, RuntimeError())  # b is retrying: not running, left alone
    out = core.restarted(0.25)
    (again,) = runs(out)
    assert again.items == ["a1", "a2"] and again.attempt == 1 and again.run not in (1, 2)
    assert again.reason == "size"
    assert core.done(0.25, r1.run, ok(["a1", "a2"])) == []  # the old run: ignored
    assert core.totals.completed == 0 and core.totals.batches == 1
    out = core.done(0.25, again.run, ok(["a1", "a2"]))
    assert answers(out) == {"a": ok(["a1", "a2"])}
    retry = one_run(core.tick(0.5))
    assert retry.items == ["b1", "b2"] and retry.attempt == 2
    assert answers(core.done(0.5, retry.run, ok(["b1", "b2"]))) == {"b": ok(["b1", "b2"])}


def test_restarted_with_nothing_running_starts_nothing() -> None:
    core = make(max_batch_size=10)
    core.submit(0.0, "a", "h", ["a"], 30.0)
    assert core.restarted(0.0) == []
    assert core.pending == 1


def test_abandon_fails_every_outstanding_item_wherever_it_is() -> None:
    core = make(
        max_batch_size=2, max_pending=2, max_in_flight=3, max_attempts=2, retry_backoff=0.5,
        max_wait=10.0,
    )  # fmt: skip
    r1 = one_run(core.submit(0.0, "r", "h", ["r1", "r2"], 30.0))
    one_run(core.submit(0.0, "u", "h", ["u1", "u2"], 30.0))
    r3 = one_run(core.submit(0.0, "o", "h", ["o1", "o2"], 30.0))
    core.done(0.0, r1.run, RuntimeError())
    r4 = one_run(core.tick(0.5))  # r's retry
    out = core.done(0.5, r4.run, RuntimeError())  # out of attempts: split
    assert runs(out) == [Run(5, ["r1"], 1, "bisect")]  # [r2] waits for a slot: ready
    core.done(0.5, r3.run, RuntimeError())  # o waits for its retry, in its slot
    assert core.submit(0.5, "q", "h", ["q1", "q2", "q3"], 30.0) == []
    # running: u (run 2) and [r1] (run 5); retrying: o; ready: [r2]; queued: q1 q2;
    # waiting for room: q3
    assert len(core.running) == 2 and len(core.retrying) == 1 and len(core.ready) == 1
    assert core.pending == 2 and core.waiting_items == 1
    end = LessorError("the end")
    out = core.abandon(0.75, end)
    assert runs(out) == [] and finished(out) == []
    got = answers(out)
    assert set(got) == {"r", "u", "o", "q"}
    assert [len(got[t]) for t in ("r", "u", "o", "q")] == [2, 2, 2, 3]
    assert all(o is end for outcomes in got.values() for o in outcomes)
    assert core.idle and core.next_deadline() is None
    assert (core.pending, core.in_flight_items, core.waiting_items) == (0, 0, 0)
    t = core.totals
    assert t.abandoned == 8  # q3 was never accepted: it fails, but was not abandoned
    assert (t.completed, t.failed, t.accepted) == (9, 9, 8)
    for run in range(1, 6):
        assert core.done(1.0, run, ok(["x"])) == []  # every old run is ignored
    assert core.tick(100.0) == []
    assert core.totals == t


def test_abandon_keeps_the_results_already_in() -> None:
    core = make(max_batch_size=2, max_in_flight=2)
    r1, _ = runs(core.submit(0.0, "a", "h", ["a1", "a2", "a3", "a4"], 30.0))
    out = core.done(0.0, r1.run, ok(["a1", "a2"]))
    assert answers(out) == {}
    end = LessorError("end")
    got = answers(core.abandon(0.0, end))
    assert got["a"][:2] == ok(["a1", "a2"]) and got["a"][2] is end and got["a"][3] is end


def test_abandon_answers_a_pending_flush() -> None:
    core = make(max_batch_size=10, max_wait=10.0, max_in_flight=1)
    core.submit(0.0, "a", "h", ["a1"], 30.0)
    core.flush(0.0, "f")
    out = core.abandon(0.0, LessorError("end"))
    assert flush_dones(out) == ["f"]
    assert set(answers(out)) == {"a"}


def test_an_empty_submission_is_answered_at_once() -> None:
    core = make(max_pending=1, max_batch_size=5)
    core.submit(0.0, "a", "h", ["a"], 30.0)
    core.submit(0.0, "b", "h", ["b"], 30.0)  # waits for room
    assert core.submit(0.0, "e", "h", [], 30.0) == [Answer("e", [])]
    t = core.totals
    assert (t.accepted, t.completed) == (1, 0)
    assert core.waiting_items == 1


def test_a_put_counts_its_failed_items_as_put_errors() -> None:
    core = make(max_batch_size=3, max_pending=3, max_wait=10.0, max_in_flight=1)
    run = one_run(core.submit(0.0, "p", "h", ["p1", "p2", "p3"], 30.0, wants_results=False))
    core.submit(0.0, "q", "h", ["q1", "q2", "q3", "q4"], 1.0, wants_results=False)
    assert core.waiting_items == 1
    assert core.tick(1.0) == []  # q4 refused: a put's failure too
    assert core.totals.put_errors == 1
    bad = ValueError()
    out = core.done(1.0, run.run, [("ok", "p1"), bad, bad])
    assert answers(out) == {"p": [("ok", "p1"), bad, bad]}  # a put is still answered
    assert core.totals.put_errors == 3
    run = one_run(out)
    core.submit(1.0, "r", "h", ["r1"], 30.0)  # results wanted: its failures are not puts
    out = core.done(1.0, run.run, [bad, ("ok", "q2"), ("ok", "q3")])
    (q,) = answers(out).values()
    assert q[:3] == [bad, ("ok", "q2"), ("ok", "q3")] and isinstance(q[3], Backpressure)
    assert core.totals.put_errors == 4
    run = one_run(core.tick(11.0))
    out = core.done(11.0, run.run, [bad])
    assert answers(out) == {"r": [bad]}
    assert core.totals.put_errors == 4 and core.totals.failed == 5


def test_stats_counters_and_latency() -> None:
    core = make(max_batch_size=2, max_wait=1.0, max_in_flight=2, max_attempts=2,
                retry_backoff=0.5)  # fmt: skip
    r1 = one_run(core.submit(0.0, "a", "h", ["a1", "a2"], 30.0))  # size
    core.submit(0.0, "b", "h", ["b1"], 30.0)
    r2 = one_run(core.tick(1.0))  # time
    core.done(2.0, r1.run, RuntimeError())
    r3 = one_run(core.tick(2.5))  # retry
    core.done(3.0, r2.run, [ValueError()])
    core.done(4.0, r3.run, ok(["a1", "a2"]))
    core.submit(4.0, "c", "h", ["c1"], 30.0)
    r4 = one_run(core.flush(4.0, "f"))  # manual
    core.done(4.0, r4.run, ok(["c1"]))
    core.submit(4.0, "d", "h", ["d1"], 30.0)
    r5 = one_run(core.drain(4.0))  # shutdown
    core.done(5.0, r5.run, ok(["d1"]))
    t = core.totals
    assert t.reasons == {"size": 1, "time": 1, "manual": 1, "shutdown": 1}
    assert (t.batches, t.batched_items, t.retries) == (5, 7, 1)
    assert (t.accepted, t.completed, t.failed) == (5, 5, 1)
    assert t == BatchTotals(
        accepted=5, completed=5, failed=1, batches=5, batched_items=7, retries=1,
        reasons={"size": 1, "time": 1, "manual": 1, "shutdown": 1},
    )  # fmt: skip
    # latency: a1, a2 4s; b1 3s; c1 0s; d1 1s
    assert sorted(core.latency._values) == [0.0, 1.0, 3.0, 4.0, 4.0]
    assert core.latency.percentiles(0.0, 1.0) == (0.0, 4.0)


def test_the_latency_median_of_five_samples_is_the_third() -> None:
    """Nearest rank: p50 of 5 samples is the ceil(2.5) = 3rd smallest. BUG (in
    ``lessor/core/samples.py``, ``Samples.percentiles``): it ranks with ``round``, which
    rounds 2.5 to 2 (banker's rounding), so the median reported is the 2nd smallest."""
    core = make(max_batch_size=1, max_in_flight=5, max_wait=10.0)
    started = runs(core.submit(0.0, "a", "h", [1, 2, 3, 4, 5], 30.0))
    assert [r.items for r in started] == [[1], [2], [3], [4], [5]]
    for r in started:  # item k has its outcome k seconds after it was accepted
        core.done(float(r.items[0]), r.run, ok(r.items))
    assert sorted(core.latency._values) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert core.latency.percentiles(0.5) == (3.0,)


# -- the model ------------------------------------------------------------------------------


class _Refused:
    """The model's outcome for an item refused for room (the core makes the error)."""

    def __repr__(self) -> str:
        return "REFUSED"


REFUSED: Any = _Refused()
HOLDERS = ("h1", "h2", "h3")
FRESH_REASONS = ("size", "manual", "shutdown", "time")
REASONS = (*FRESH_REASONS, "retry", "bisect")


@dataclass
class MSub:
    ticket: str
    holder: str
    items: list[Item]
    deadline: float
    wants_results: bool
    taken: int = 0  # items accepted
    gone: bool = False  # its holder died: no answer
    answered: int = 0


@dataclass
class MBatch:
    items: tuple[Item, ...]
    attempt: int  # runs so far
    budget: int  # runs before it is split or fails


@dataclass
class Books:
    totals: BatchTotals = field(default_factory=BatchTotals)
    latency: int = 0  # latency samples: accepted items with an outcome


def item_of(entry: _Entry) -> Any:
    return entry.sub.items[entry.index]


def batch_items(batch: _Batch) -> tuple[Any, ...]:
    return tuple(item_of(e) for e in batch.entries)


def same(expected: Any, got: Any) -> bool:
    if expected is REFUSED:
        return isinstance(got, Backpressure)
    if isinstance(expected, BaseException):
        return got is expected
    return not isinstance(got, BaseException) and bool(got == expected)


class BatchMachine(RuleBasedStateMachine):
    """The actor of one BatchCore, with its own books."""

    CORE: ClassVar[type[BatchCore]] = BatchCore

    def __init__(self) -> None:
        super().__init__()
        self.core: BatchCore | None = None
        self.s = BatchSettings()
        self.now = 0.0
        self.steps = 0
        self.drain_after: int | None = None
        self.may_restart = True
        self.restarted_once = False
        self._subs = itertools.count(1)
        self._errors = itertools.count(1)
        self.subs: dict[str, MSub] = {}
        self.owner: dict[Item, MSub] = {}
        self.accepted: list[Item] = []
        self.accepted_at: dict[Item, float] = {}
        self.seq: dict[Item, int] = {}
        self.queue: deque[Item] = deque()
        self.waiting: deque[MSub] = deque()
        self.running: dict[int, MBatch] = {}
        self.retrying: list[tuple[float, MBatch]] = []
        self.ready: deque[MBatch] = deque()
        self.outcome: dict[Item, Any] = {}
        self.flushes: dict[str, int] = {}  # ticket -> mark (items accepted before it)
        self.flush_mark = 0
        self.draining = False
        self.stale: set[int] = set()  # runs that must be ignored now
        self.run_ids: set[int] = set()  # every run id handed out
        self.first_seen: list[Item] = []
        self.seen: set[Item] = set()
        self.answers: list[tuple[list[Any], list[Any]]] = []  # (the list, a copy)
        self.books = Books()

    # -- setup ---------------------------------------------------------------------------

    @initialize(
        max_batch_size=st.sampled_from([1, 2, 3, 4]),
        max_wait=st.sampled_from([0.5, 1.0]),
        max_pending=st.sampled_from([1, 2, 3, 5, 8]),
        max_in_flight=st.sampled_from([1, 1, 2, 3]),
        max_attempts=st.sampled_from([1, 2, 3]),
        retry_backoff=st.sampled_from([0.25, 0.5]),
        backoff_cap=st.sampled_from([1, 2, 4]),
        bisect=st.booleans(),
        drain_after=st.sampled_from([None, None, 10, 25]),
        may_restart=st.booleans(),
    )
    def start(
        self,
        max_batch_size: int,
        max_wait: float,
        max_pending: int,
        max_in_flight: int,
        max_attempts: int,
        retry_backoff: float,
        backoff_cap: int,
        bisect: bool,
        drain_after: int | None,
        may_restart: bool,
    ) -> None:
        self.s = BatchSettings(
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            max_pending=max_pending,
            max_in_flight=max_in_flight,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff * backoff_cap,
            bisect=bisect,
        )
        self.drain_after = drain_after
        self.may_restart = may_restart
        self.core = self.CORE(self.s)

    @property
    def c(self) -> BatchCore:
        assert self.core is not None
        return self.core

    # -- the model's own rules -----------------------------------------------------------

    def admit(self) -> None:
        while self.waiting and len(self.queue) < self.s.max_pending:
            sub = self.waiting[0]
            x = sub.items[sub.taken]
            sub.taken += 1
            self.queue.append(x)
            self.accepted.append(x)
            self.accepted_at[x] = self.now
            self.seq[x] = len(self.accepted)
            self.books.totals.accepted += 1
            if sub.taken == len(sub.items):
                self.waiting.popleft()

    def settle(self, x: Item, value: Any, *, accepted: bool = True) -> None:
        assert x not in self.outcome, f"{x} settled twice"
        self.outcome[x] = value
        t = self.books.totals
        t.completed += 1
        if value is REFUSED or isinstance(value, BaseException):
            t.failed += 1
            if not self.owner[x].wants_results:
                t.put_errors += 1
        if accepted:
            self.books.latency += 1

    def slots(self) -> int:
        return self.s.max_in_flight - len(self.running) - len(self.retrying)

    def fresh_reason(self) -> FlushReason | None:
        """Why the queue's head batch may start now (None: it may not)."""
        if not self.queue:
            return None
        head = self.queue[0]
        if len(self.queue) >= self.s.max_batch_size:
            return "size"
        if self.seq[head] <= self.flush_mark:
            return "manual"
        if self.draining:
            return "shutdown"
        if self.now - self.accepted_at[head] >= self.s.max_wait:
            return "time"
        return None

    def expected_deadline(self) -> float | None:
        times = [due for due, _ in self.retrying] + [sub.deadline for sub in self.waiting]
        if self.queue and self.slots() > 0:
            times.append(self.accepted_at[self.queue[0]] + self.s.max_wait)
        return min(times, default=None)

    # -- carrying out decisions ----------------------------------------------------------

    def walk(
        self, out: list[Decision], restarts: dict[tuple[Any, ...], MBatch] | None = None
    ) -> None:
        assert isinstance(out, list), out
        for d in out:
            if isinstance(d, Run):
                self.on_run(d, restarts)
            elif isinstance(d, Answer):
                self.on_answer(d)
            elif isinstance(d, FlushDone):
                self.on_flush_done(d)
            else:
                raise AssertionError(f"unexpected decision {d!r}")
        # nothing owed is missing
        for sub in self.subs.values():
            if not sub.gone and not sub.answered and all(x in self.outcome for x in sub.items):
                raise AssertionError(f"{sub.ticket}: every item has its outcome, no Answer")
        for ticket, mark in self.flushes.items():
            if all(x in self.outcome for x in self.accepted[:mark]):
                raise AssertionError(f"flush {ticket}: every item has its outcome, no FlushDone")

    def on_run(self, d: Run, restarts: dict[tuple[Any, ...], MBatch] | None) -> None:
        items = tuple(d.items)
        assert d.run not in self.run_ids, f"run id {d.run} handed out twice"
        self.run_ids.add(d.run)
        assert items, f"an empty run {d}"
        assert len(set(items)) == len(items), f"{d} holds an item twice"
        for x in items:
            assert x not in self.outcome, f"{d} holds {x}, which has its outcome"
        assert d.reason in REASONS, d
        if restarts is not None and items in restarts:
            batch = restarts.pop(items)
            assert d.attempt == batch.attempt, f"{d}: a restart is attempt {batch.attempt}"
        elif d.reason == "retry":
            match = [(due, b) for due, b in self.retrying if b.items == items]
            assert match, f"{d} retries no retrying batch"
            due, batch = match[0]
            assert due <= self.now, f"{d} at {self.now}, due at {due}"
            self.retrying.remove(match[0])
            batch.attempt += 1
            assert d.attempt == batch.attempt, f"{d}: expected attempt {batch.attempt}"
        elif d.reason == "bisect":
            assert restarts is None or not restarts
            assert self.slots() > 0, f"{d} with no free slot"
            assert self.ready, f"{d} but no half was due"
            batch = self.ready.popleft()
            assert items == batch.items, f"{d}: the next half is {batch.items}"
            batch.attempt = 1
            assert d.attempt == 1, d
        else:
            assert restarts is None or not restarts
            assert self.slots() > 0, f"{d} with no free slot"
            assert not self.ready, f"{d} before the halves {list(self.ready)}"
            reason = self.fresh_reason()
            assert reason is not None, f"{d} but the queue's head may not start yet"
            assert d.reason == reason, f"{d}: expected reason {reason}"
            take = min(len(self.queue), self.s.max_batch_size)
            expected = tuple(list(self.queue)[:take])
            assert items == expected, f"{d}: the queue's head batch is {expected}"
            for _ in range(take):
                self.queue.popleft()
            self.books.totals.reasons[reason] = self.books.totals.reasons.get(reason, 0) + 1
            self.admit()
            batch = MBatch(items, 1, self.s.max_attempts)
            assert d.attempt == 1, d
        self.running[d.run] = batch
        for x in items:
            if x not in self.seen:
                self.seen.add(x)
                self.first_seen.append(x)
        if self.s.max_in_flight == 1 and not self.restarted_once:
            n = len(self.first_seen)
            assert self.first_seen == self.accepted[:n], (
                f"first runs in order {self.first_seen}, accepted {self.accepted[:n]}"
            )

    def on_answer(self, d: Answer) -> None:
        sub = self.subs.get(d.ticket)
        assert sub is not None, f"Answer for unknown ticket {d.ticket!r}"
        assert not sub.gone, f"Answer for {d.ticket}, whose holder is gone"
        assert sub.answered == 0, f"{d.ticket} answered twice"
        sub.answered += 1
        assert isinstance(d.outcomes, list) and len(d.outcomes) == len(sub.items), d
        for x, got in zip(sub.items, d.outcomes, strict=True):
            assert x in self.outcome, f"{d.ticket} answered before {x} had its outcome"
            assert same(self.outcome[x], got), f"{x}: got {got!r}, expected {self.outcome[x]!r}"
        self.answers.append((d.outcomes, list(d.outcomes)))

    def on_flush_done(self, d: FlushDone) -> None:
        assert d.ticket in self.flushes, f"FlushDone for {d.ticket!r}: none pending"
        mark = self.flushes.pop(d.ticket)
        left = [x for x in self.accepted[:mark] if x not in self.outcome]
        assert not left, f"FlushDone {d.ticket} but {left} have no outcome"

    # -- rules ---------------------------------------------------------------------------

    @rule(
        holder=st.sampled_from(HOLDERS),
        size=st.integers(0, 5),
        timeout=st.sampled_from([0.0, 0.5, 1.0, 2.0, 8.0]),
        wants_results=st.sampled_from([True, True, True, False]),
    )
    def submit(self, holder: str, size: int, timeout: float, wants_results: bool) -> None:
        n = next(self._subs)
        ticket = f"t{n}"
        items: list[Item] = [(n, i) for i in range(size)]
        out = self.c.submit(self.now, ticket, holder, list(items), timeout, wants_results)
        if not items:
            assert out == [Answer(ticket, [])], out
            return
        sub = MSub(ticket, holder, items, self.now + timeout, wants_results)
        self.subs[ticket] = sub
        for x in items:
            self.owner[x] = sub
        self.waiting.append(sub)
        self.admit()
        self.walk(out)

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 4.0]), to_deadline=st.booleans())
    def tick(self, dt: float, to_deadline: bool) -> None:
        due = self.c.next_deadline()
        self.now = due if to_deadline and due is not None and due > self.now else self.now + dt
        for sub in [s for s in self.waiting if s.deadline <= self.now]:
            self.waiting.remove(sub)
            for x in sub.items[sub.taken :]:
                self.books.totals.backpressure += 1
                self.settle(x, REFUSED, accepted=False)
        self.admit()
        self.walk(self.c.tick(self.now))
        late = [due for due, _ in self.retrying if due <= self.now]
        assert not late, f"retries due at {late} not started by tick({self.now})"

    @precondition(lambda self: bool(self.running))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["ok", "ok", "partial", "raise", "raise", "short", "long", "tuple"]),
    )
    def done(self, data: st.DataObject, kind: str) -> None:
        run = data.draw(st.sampled_from(sorted(self.running)), label="run")
        batch = self.running.pop(run)
        items = list(batch.items)
        outcome: Any
        if kind == "ok":
            outcome = ok(items)
        elif kind == "partial":
            bad = data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items)))
            outcome = [
                ValueError(f"bad {x} #{next(self._errors)}") if b else ("ok", x)
                for x, b in zip(items, bad, strict=True)
            ]
        elif kind == "raise":
            outcome = RuntimeError(f"boom #{next(self._errors)}")
        elif kind == "short":
            outcome = ok(items[:-1])
        elif kind == "long":
            outcome = [*ok(items), ("ok", "extra")]
        else:
            outcome = tuple(ok(items))
        out = self.c.done(self.now, run, outcome)
        assert out and isinstance(out[0], Finished), f"done({run}) began with {out[:1]}"
        fin = out[0]
        assert not finished(out[1:]), out
        assert (fin.run, fin.size) == (run, len(items)), fin
        t = self.books.totals
        t.batches += 1
        t.batched_items += len(items)
        if isinstance(outcome, list) and len(outcome) == len(items):
            failed = [(x, r) for x, r in zip(items, outcome, strict=True)
                      if isinstance(r, BaseException)]  # fmt: skip
            assert (fin.result, fin.error) == ("ok", None), fin
            self.check_failed(fin, failed)
            for x, r in zip(items, outcome, strict=True):
                self.settle(x, r)
        else:
            self.batch_failed(batch, fin, outcome)
        self.walk(out[1:])

    def batch_failed(self, batch: MBatch, fin: Finished, outcome: Any) -> None:
        """The processor raised or broke its contract: retry, split or fail."""
        t, items = self.books.totals, batch.items
        if isinstance(outcome, BaseException):
            error: BaseException = outcome
            assert fin.error is error, fin
        else:
            assert isinstance(fin.error, ProcessorError), fin
            error = fin.error
        if batch.attempt < batch.budget:
            assert fin.result == "retry", f"{fin}: attempt {batch.attempt} of {batch.budget}"
            self.check_failed(fin, [])
            t.retries += 1
            backoff = self.s.retry_backoff * 2 ** (batch.attempt - 1)
            self.retrying.append((self.now + min(backoff, self.s.retry_backoff_max), batch))
        elif self.s.bisect and len(items) > 1:
            assert fin.result == "bisect", fin
            self.check_failed(fin, [])
            t.bisections += 1
            half = len(items) // 2
            self.ready.extendleft([MBatch(items[half:], 0, 1), MBatch(items[:half], 0, 1)])
        else:
            assert fin.result == "failed", fin
            self.check_failed(fin, [(x, error) for x in items])
            for x in items:
                self.settle(x, error)

    def check_failed(self, fin: Finished, expected: list[tuple[Any, BaseException]]) -> None:
        assert len(fin.failed) == len(expected), f"{fin.failed} != {expected}"
        for (x, e), (y, f) in zip(fin.failed, expected, strict=True):
            assert x == y and e is f, f"{fin.failed} != {expected}"

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data())
    def done_for_a_stale_run(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(sorted(self.stale)), label="stale run")
        before = (copy.deepcopy(self.c.totals), self.c.pending, self.c.in_flight_items)
        out = self.c.done(self.now, run, RuntimeError("late"))
        assert out == [], f"done for stale run {run}: {out}"
        assert (self.c.totals, self.c.pending, self.c.in_flight_items) == before

    @rule()
    def flush(self) -> None:
        ticket = f"f{next(self._subs)}"
        self.flush_mark = len(self.accepted)
        self.flushes[ticket] = self.flush_mark
        self.walk(self.c.flush(self.now, ticket))

    @rule(holder=st.sampled_from(HOLDERS))
    def holder_gone(self, holder: str) -> None:
        for sub in self.subs.values():
            if sub.holder != holder or sub.gone or sub.answered:
                continue
            if sub in self.waiting:
                self.waiting.remove(sub)
            left = [x for x in sub.items[: sub.taken] if x not in self.outcome]
            self.books.totals.results_dropped += len(left)
            sub.gone = True
        self.admit()
        self.c.holder_gone(holder)

    @precondition(lambda self: self.may_restart)
    @rule()
    def restarted(self) -> None:
        self.restarted_once = True
        restarts = {b.items: b for b in self.running.values()}
        self.stale |= self.running.keys()
        self.running.clear()
        self.walk(self.c.restarted(self.now), restarts)
        assert not restarts, f"not run again after the restart: {list(restarts)}"

    @precondition(
        lambda self: (
            not self.draining and self.drain_after is not None and self.steps >= self.drain_after
        )
    )
    @rule()
    def drain(self) -> None:
        self.draining = True
        self.walk(self.c.drain(self.now))

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def books_agree(self) -> None:
        if self.core is None:
            return
        self.steps += 1
        c, s = self.core, self.s
        queue = [item_of(e) for e in c.queue]
        running = {run: batch_items(b) for run, b in c.running.items()}
        retrying = [(due, batch_items(b)) for due, b in c.retrying]
        ready = [batch_items(b) for b in c.ready]
        assert len(queue) <= s.max_pending, f"{len(queue)} queued, max_pending={s.max_pending}"
        assert len(running) + len(retrying) <= s.max_in_flight, (
            f"{len(running)} running + {len(retrying)} retrying > max_in_flight"
        )
        # every accepted item is in exactly one place, or has its outcome
        places = [*queue, *(x for v in running.values() for x in v),
                  *(x for _, v in retrying for x in v), *(x for v in ready for x in v)]  # fmt: skip
        assert len(places) == len(set(places)), f"an item is in two places: {places}"
        done = {x for x in self.accepted if x in self.outcome}
        assert not done & set(places), f"items with an outcome still held: {done & set(places)}"
        assert set(places) - set(self.accepted) == set(), "an item held but never accepted"
        assert set(places) | done == set(self.accepted), "an accepted item was lost"
        # against the books
        assert queue == list(self.queue), f"queue {queue}, expected {list(self.queue)}"
        assert running == {run: b.items for run, b in self.running.items()}
        expected = sorted((due, b.items) for due, b in self.retrying)
        assert sorted(retrying) == expected, f"retry due times {retrying}, expected {expected}"
        assert ready == [b.items for b in self.ready]
        waiting = sum(len(sub.items) - sub.taken for sub in self.waiting)
        assert c.waiting_items == waiting, f"{c.waiting_items} waiting, expected {waiting}"
        assert c.pending == len(queue)
        assert c.in_flight_items == len(places) - len(queue)
        assert c.idle == (not (places or self.waiting))
        assert c.totals == self.books.totals, f"{c.totals} != {self.books.totals}"
        assert len(c.latency._values) == self.books.latency
        # nothing stalls: a free slot takes the halves, then any batch due
        if self.slots() > 0:
            assert not self.ready, f"halves wait with {self.slots()} slots free"
            assert self.fresh_reason() is None, "a batch is due, a slot is free, none runs"
        if self.waiting:
            assert len(self.queue) == s.max_pending, "a submission waits while there is room"
        assert all(due > self.now for due, _ in self.retrying)
        assert all(sub.deadline >= self.now for sub in self.waiting)
        nd = c.next_deadline()
        assert nd == self.expected_deadline(), f"next_deadline {nd}, {self.expected_deadline()}"

    def teardown(self) -> None:
        # (teardown runs in a ``finally``: after a failed step, let that failure show)
        if self.core is None or sys.exc_info()[0] is not None:
            return
        end = LessorError("the end")
        for x in self.accepted:
            if x not in self.outcome:
                self.books.totals.abandoned += 1
                self.settle(x, end)
        for sub in self.waiting:
            for x in sub.items[sub.taken :]:
                self.settle(x, end, accepted=False)
        self.waiting.clear()
        self.queue.clear()
        self.stale |= self.running.keys()
        self.running.clear()
        self.retrying.clear()
        self.ready.clear()
        self.walk(self.c.abandon(self.now, end))
        for sub in self.subs.values():
            assert sub.answered == (0 if sub.gone else 1), f"{sub.ticket}: {sub.answered}"
        assert not self.flushes, f"flushes never done: {self.flushes}"
        assert self.c.idle and self.c.next_deadline() is None
        assert self.c.totals == self.books.totals, f"{self.c.totals} != {self.books.totals}"
        for run in sorted(self.run_ids):
            assert self.c.done(self.now, run, RuntimeError("late")) == []
        for outcomes, sent in self.answers:  # nobody changed an answer after it went
            assert len(outcomes) == len(sent) and all(
                a is b for a, b in zip(outcomes, sent, strict=True)
            ), "an Answer's outcomes changed after it was sent"


FAST = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_batch_core_state_machine() -> None:
    run_state_machine_as_test(BatchMachine, settings=FAST)


# -- the checker catches broken cores ------------------------------------------------------


class DropsTheLastItem(BatchCore):
    """Leaves the last item of each batch out of its Run."""

    def _start(
        self, batch: _Batch, reason: FlushReason, out: list[Decision], count: bool = True
    ) -> None:
        super()._start(batch, reason, out, count)
        run = out[-1]
        assert isinstance(run, Run)
        if len(run.items) > 1:
            out[-1] = Run(run.run, run.items[:-1], run.attempt, run.reason)


class RunsAnItemTwice(BatchCore):
    """Puts the first item of each batch in its Run twice."""

    def _start(
        self, batch: _Batch, reason: FlushReason, out: list[Decision], count: bool = True
    ) -> None:
        super()._start(batch, reason, out, count)
        run = out[-1]
        assert isinstance(run, Run)
        out[-1] = Run(run.run, [*run.items, run.items[0]], run.attempt, run.reason)


class MixesUpResults(BatchCore):
    """Gives a batch's results to its items in reverse order."""

    def done(self, now: float, run: int, outcome: Any) -> list[Decision]:
        if isinstance(outcome, list):
            outcome = outcome[::-1]
        return super().done(now, run, outcome)


class AdmitsPastMaxPending(BatchCore):
    """Takes one item more than max_pending into the queue."""

    def _admit(self, now: float) -> None:
        room = self.settings.max_pending + 1 - len(self.queue)
        while self.waiting and room > 0:
            sub = self.waiting[0]
            take = min(room, len(sub.items) - sub.taken)
            for index in range(sub.taken, sub.taken + take):
                self._seq += 1
                self.queue.append(_Entry(self._seq, sub, index, now))
            sub.taken += take
            room -= take
            self.totals.accepted += take
            if sub.taken == len(sub.items):
                self.waiting.popleft()


class AnswersEarly(BatchCore):
    """Answers a submission when one item still has no outcome."""

    def _settle(self, sub: _Submission, index: int, value: Any, out: list[Decision]) -> None:
        super()._settle(sub, index, value, out)
        if sub.left == 1 and sub.ticket is not None:
            out.append(Answer(sub.ticket, sub.outcomes))


class NoDoubling(BatchCore):
    """Every retry waits retry_backoff, never more."""

    def done(self, now: float, run: int, outcome: Any) -> list[Decision]:
        before = {id(b) for _, b in self.retrying}
        out = super().done(now, run, outcome)
        self.retrying = [
            (due if id(b) in before else min(due, now + self.settings.retry_backoff), b)
            for due, b in self.retrying
        ]
        return out


class RetryGivesUpItsSlot(BatchCore):
    """A batch waiting for its retry does not keep its slot."""

    def _slots(self) -> int:
        return self.settings.max_in_flight - len(self.running)


class TakesLateRuns(BatchCore):
    """After a restart, the old run's done counts for the batch run again."""

    def __init__(self, settings: BatchSettings) -> None:
        super().__init__(settings)
        self.renamed: dict[int, int] = {}

    def restarted(self, now: float) -> list[Decision]:
        old = {id(b): run for run, b in self.running.items()}
        out = super().restarted(now)
        for run, b in self.running.items():
            if id(b) in old:
                self.renamed[old[id(b)]] = run
        return out

    def done(self, now: float, run: int, outcome: Any) -> list[Decision]:
        return super().done(now, self.renamed.get(run, run), outcome)


class ForgetsWaitersOfTheDead(BatchCore):
    """A dead holder's items that wait for room stay and are accepted later."""

    def holder_gone(self, holder: str) -> None:
        for sub in self._submissions(holder):
            sub.ticket, sub.holder = None, ""
            self.totals.results_dropped += sub.left


class FlushesAtOnce(BatchCore):
    """Says a flush is done when it is asked for."""

    def flush(self, now: float, ticket: Any) -> list[Decision]:
        self._flush_mark = self._seq
        out: list[Decision] = [FlushDone(ticket)]
        self._schedule(now, out)
        return out


MUTANTS: dict[type[BatchCore], str] = {  # the mutant: what the machine says (a regex)
    DropsTheLastItem: "the queue's head batch is",
    RunsAnItemTwice: "holds an item twice",
    MixesUpResults: "expected",
    AdmitsPastMaxPending: "max_pending",
    AnswersEarly: "answered twice|answered before",
    NoDoubling: "retry due times|next_deadline",
    RetryGivesUpItsSlot: "no free slot|max_in_flight",
    TakesLateRuns: "stale run",
    ForgetsWaitersOfTheDead: "waiting|holder is gone",
    FlushesAtOnce: "FlushDone",
}


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=[m.__name__ for m in MUTANTS])
def test_the_state_machine_catches_a_mutant(mutant: type[BatchCore]) -> None:
    print(mutant.__name__, "->", assert_catches(BatchMachine, mutant, MUTANTS[mutant]))


def test_the_state_machine_passes_the_real_core_with_the_mutant_settings() -> None:
    """The mutant runs above fail because of the mutants, not the settings."""
    assert_passes(BatchMachine, max_examples=100)
