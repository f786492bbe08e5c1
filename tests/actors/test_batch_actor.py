"""Batchers in one process: the Batcher handle over its supervised BatchActor.

Every test goes through ``Runtime(handle_signals=False).add_batcher(BatchSpec(...))``
and the handle it returns, with real threads and no mocks. The contract is the
module docstring of lessor/core/batch.py (order, retries, bisection), the handle's
(lessor/handles/batcher.py: futures, the per-handle window, flush) and the actor's
(lessor/actors/batch.py: state survives restarts, running batches run again).

Nothing here sleeps to synchronise: processors that must stay busy wait on an
Event (with a deadline), and outcomes are awaited through futures or ``wait_until``.
A processor that "holds for a random time" sleeps as its own work, not to order
anything.
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

import lessor.actors.batch as batch_actor
from lessor import (
    ActorStopped,
    Backpressure,
    Batcher,
    BatchEvent,
    BatchSpec,
    LessorError,
    NoSuchBatcher,
    Runtime,
    RuntimeStopped,
)
from lessor.actors.base import actor_of
from lessor.actors.reply import OneShot
from lessor.core.batch import BatchCore
from lessor.core.batch_decisions import ProcessorError
from lessor.errors import ActorRestarted
from lessor.protocol.messages import BatcherStats
from tests.support.actors import crash_actor
from tests.support.helpers import in_thread, wait_until

NAME = "sink"
BOUND = 10.0  # seconds to wait for an outcome the batcher decides (measured: a few ms)
HOLD = 30.0  # the longest a gated processor waits for its gate (a test failed if it does)

Items = list[Any]


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(max_restarts=10, handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


@pytest.fixture
def gate(runtime: Runtime) -> Iterator[threading.Event]:
    """An Event a processor waits on; set at teardown, before the runtime shuts down."""
    event = threading.Event()
    yield event
    event.set()


def spec(processor: Callable[[Items], Items], **overrides: Any) -> BatchSpec:
    return BatchSpec(NAME, processor, **overrides)


def f(item: Any) -> tuple[str, Any]:
    """The processor's result for ``item``: derived from it, so a mix-up shows."""
    return ("done", item)


def work() -> None:
    """The processor's own work: a random, non-zero time (not synchronisation)."""
    time.sleep(random.uniform(0.0002, 0.002))


class Recorder:
    """A processor that records every call's items (thread-safe) and answers ``f(item)``."""

    def __init__(self, before: Callable[[Items], object] | None = None) -> None:
        self.calls: list[Items] = []
        self._lock = threading.Lock()
        self._before = before  # runs after the call is recorded (a gate, some work)

    def __call__(self, items: Items) -> Items:
        with self._lock:
            self.calls.append(list(items))
        if self._before is not None:
            self._before(items)
        return [f(item) for item in items]

    @property
    def runs(self) -> int:
        with self._lock:
            return len(self.calls)

    def seen(self) -> Items:
        with self._lock:
            return [item for call in self.calls for item in call]


class Boom(Exception):
    """The sink failed."""


def results(futures: list[Future[Any]]) -> list[Any]:
    return [future.result(BOUND) for future in futures]


def crash(runtime: Runtime, name: str = NAME) -> None:
    """Make the batcher's actor fail as a bug would, and wait for its next incarnation."""
    crash_actor(runtime._batchers.targets[name], BOUND)


# -- every item gets its own result --------------------------------------------------------


@pytest.mark.parametrize("in_flight", [1, 4])
def test_every_submitter_gets_its_own_results_with_many_threads(
    runtime: Runtime, in_flight: int
) -> None:
    threads_n, per_thread = 8, 500
    recorder = Recorder(before=lambda _items: work())
    batcher = runtime.add_batcher(
        spec(recorder, max_batch_size=64, max_wait=0.002, max_in_flight=in_flight)
    )
    start = threading.Barrier(threads_n)

    def submitter(t: int) -> Callable[[], list[tuple[Any, Future[Any]]]]:
        def run() -> list[tuple[Any, Future[Any]]]:
            start.wait(BOUND)
            return [((t, i), batcher.submit((t, i))) for i in range(per_thread)]

        return run

    threads = [in_thread(submitter(t)) for t in range(threads_n)]
    for thread, _ in threads:
        thread.join(BOUND * 3)
    outs = [out[0] for _, out in threads]
    assert all(isinstance(out, list) for out in outs), outs
    for submitted in outs:
        assert [fut.result(BOUND) for _, fut in submitted] == [f(item) for item, _ in submitted]

    everything = [(t, i) for t in range(threads_n) for i in range(per_thread)]
    seen = recorder.seen()
    assert Counter(seen) == Counter(everything)  # every item reached the processor, once
    if in_flight == 1:  # each submitter's items reached the processor in its order
        for t in range(threads_n):
            assert [i for tt, i in seen if tt == t] == list(range(per_thread))
    stats = batcher.stats()
    assert (stats.accepted, stats.completed, stats.failed) == (4000, 4000, 0)
    assert (stats.pending, stats.in_flight, stats.waiting) == (0, 0, 0)
    assert batcher.outstanding == 0


class PausingLock:
    """An actor's turn lock that can keep one thread just after it released the turn
    (where ``LessorActor._end_turn`` goes on to carry out what its turn decided)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hold: int | None = None
        self.held = threading.Event()
        self.go = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()
        if self._hold == threading.get_ident():
            self._hold = None
            self.held.set()
            self.go.wait(HOLD)

    def hold_this_thread(self) -> None:
        self._hold = threading.get_ident()


def test_a_turn_that_decided_nothing_does_not_carry_out_the_next_turns_effects(
    runtime: Runtime,
) -> None:
    """What makes test_every_submitter_gets_its_own_results_with_many_threads fail now
    and then (an item processed twice, InvalidStateError from a future set twice),
    made deterministic: thread A ends an empty turn and is held right after releasing
    it; this thread's Submit takes a turn that queues a Run and carries it out; A goes
    on and, holding the same list, carries out that Run again."""
    recorder = Recorder()
    batcher = runtime.add_batcher(spec(recorder, max_batch_size=5, max_wait=60))
    actor = actor_of(runtime._batchers.targets[NAME].actor_ref)
    assert actor is not None
    lock = PausingLock()
    actor._turn_lock = lock  # type: ignore[assignment]
    empty, out = in_thread(lambda: actor.in_turn(lock.hold_this_thread))
    try:
        assert lock.held.wait(BOUND)
        first = batcher.submit_many(range(5))  # a full batch: its turn queues one Run
        assert results(first) == [f(n) for n in range(5)]
    finally:
        lock.go.set()
        empty.join(BOUND)
    assert out == [None]
    second = batcher.submit_many(range(5, 10))  # one at a time, in order: after any rerun
    assert results(second) == [f(n) for n in range(5, 10)]
    assert recorder.calls == [list(range(5)), list(range(5, 10))]  # nothing crashed: once


def test_submit_many_answers_each_item_in_order(runtime: Runtime) -> None:
    batcher = runtime.add_batcher(spec(Recorder(), max_batch_size=7, max_wait=0.005))
    items = [f"item-{n}" for n in range(50)]
    assert results(batcher.submit_many(items)) == [f(item) for item in items]
    assert batcher.submit_many([]) == []


# -- failures ------------------------------------------------------------------------------


def test_an_error_in_the_result_list_fails_only_its_own_item(runtime: Runtime) -> None:
    made: dict[int, Boom] = {}

    def process(items: Items) -> Items:
        out: Items = []
        for item in items:
            if item % 3 == 0:
                made[item] = Boom(f"item {item}")
                out.append(made[item])
            else:
                out.append(item * 10)
        return out

    batcher = runtime.add_batcher(spec(process, max_batch_size=10, max_wait=60))
    futures = batcher.submit_many(range(10))
    for item, future in enumerate(futures):
        if item % 3 == 0:
            assert future.exception(BOUND) is made[item]  # that very exception object
        else:
            assert future.result(BOUND) == item * 10
    stats = batcher.stats()
    assert (stats.batches, stats.retries, stats.completed, stats.failed) == (1, 0, 10, 4)


def test_a_raising_processor_is_retried_then_fails_every_item_with_its_error(
    runtime: Runtime,
) -> None:
    raised: list[Boom] = []

    def process(items: Items) -> Items:
        raised.append(Boom(f"run {len(raised) + 1}"))
        raise raised[-1]

    batcher = runtime.add_batcher(
        spec(process, max_batch_size=5, max_wait=60, max_attempts=3, retry_backoff=0.005,
             bisect=False)
    )  # fmt: skip
    futures = batcher.submit_many(range(5))
    errors = [future.exception(BOUND) for future in futures]
    assert len(raised) == 3  # max_attempts runs
    assert all(error is raised[-1] for error in errors)  # the error of the last run
    stats = batcher.stats()
    assert (stats.batches, stats.retries, stats.bisections, stats.failed) == (3, 2, 0, 5)


def test_a_batch_that_fails_then_succeeds_on_retry_answers_every_item(runtime: Runtime) -> None:
    runs: list[Items] = []

    def process(items: Items) -> Items:
        runs.append(list(items))
        if len(runs) < 3:
            raise Boom("flaky")
        return [f(item) for item in items]

    batcher = runtime.add_batcher(
        spec(process, max_batch_size=4, max_wait=60, max_attempts=3, retry_backoff=0.005)
    )
    assert results(batcher.submit_many("abcd")) == [f(c) for c in "abcd"]
    assert runs == [list("abcd")] * 3
    assert batcher.stats().retries == 2


@pytest.mark.parametrize(
    "answer", [lambda items: items[:-1], lambda items: [*items, "extra"], lambda items: None],
    ids=["short", "long", "not-a-list"],
)  # fmt: skip
def test_a_result_list_of_the_wrong_length_fails_with_processor_error(
    runtime: Runtime, answer: Callable[[Items], Any]
) -> None:
    runs: list[Items] = []

    def process(items: Items) -> Any:
        runs.append(list(items))
        return answer(items)

    batcher = runtime.add_batcher(
        spec(process, max_batch_size=4, max_wait=60, max_attempts=2, retry_backoff=0.005,
             bisect=False)
    )  # fmt: skip
    errors = [future.exception(BOUND) for future in batcher.submit_many(range(4))]
    assert all(isinstance(error, ProcessorError) for error in errors), errors
    assert all(isinstance(error, LessorError) for error in errors)
    assert "list of 4 results" in str(errors[0])
    assert len(runs) == 2  # a broken result is retried like a raise


# -- bisection -----------------------------------------------------------------------------


class Poisoned(Exception):
    pass


def poison_processor(poison: int, runs: list[Items]) -> Callable[[Items], Items]:
    lock = threading.Lock()

    def process(items: Items) -> Items:
        with lock:
            runs.append(list(items))
        if poison in items:
            raise Poisoned(f"{len(items)} items with {poison}")
        return [f(item) for item in items]

    return process


def test_bisection_fails_the_poison_item_alone(runtime: Runtime) -> None:
    runs: list[Items] = []
    attempts = 2
    batcher = runtime.add_batcher(
        spec(poison_processor(37, runs), max_batch_size=64, max_wait=60,
             max_attempts=attempts, retry_backoff=0.005)
    )  # fmt: skip
    futures = batcher.submit_many(range(64))
    for item, future in enumerate(futures):
        if item == 37:
            error = future.exception(BOUND)
            assert isinstance(error, Poisoned)
            assert str(error) == "1 items with 37"  # failed alone, in a run of its own
        else:
            assert future.result(BOUND) == f(item)
    # ``attempts`` runs of the 64, then two halves per level down to the poison item.
    assert len(runs) == attempts + 2 * int(math.log2(64)), [len(r) for r in runs]
    assert sorted(len(r) for r in runs[attempts:]) == sorted([32, 32, 16, 16, 8, 8, 4, 4, 2, 2,
                                                              1, 1])  # fmt: skip
    stats = batcher.stats()
    assert (stats.failed, stats.completed) == (1, 64)
    assert stats.bisections == 1 + 5  # the 64, then the poisoned half of 32 .. 2


def test_without_bisection_the_whole_batch_fails(runtime: Runtime) -> None:
    runs: list[Items] = []
    batcher = runtime.add_batcher(
        spec(poison_processor(37, runs), max_batch_size=64, max_wait=60, max_attempts=2,
             retry_backoff=0.005, bisect=False)
    )  # fmt: skip
    errors = [future.exception(BOUND) for future in batcher.submit_many(range(64))]
    assert all(isinstance(error, Poisoned) for error in errors)
    assert len({id(error) for error in errors}) == 1
    assert [len(r) for r in runs] == [64, 64]
    assert batcher.stats().failed == 64


# -- order -----------------------------------------------------------------------------------


def test_one_in_flight_keeps_submission_order_through_retries(runtime: Runtime) -> None:
    calls: list[Items] = []
    failed_once: set[tuple[Any, ...]] = set()

    def process(items: Items) -> Items:
        calls.append(list(items))
        work()
        key = tuple(items)
        if key not in failed_once and any(item % 40 == 0 for item in items):
            failed_once.add(key)
            raise Boom("first attempt")
        return [f(item) for item in items]

    batcher = runtime.add_batcher(
        spec(process, max_batch_size=16, max_wait=0.003, max_in_flight=1, max_attempts=3,
             retry_backoff=0.002)
    )  # fmt: skip
    futures = [batcher.submit(n) for n in range(300)]
    assert results(futures) == [f(n) for n in range(300)]
    assert len(failed_once) == 8  # 0, 40, .., 280: each in one batch (at most 16 items)
    assert batcher.stats().retries == 8
    collapsed = [call for n, call in enumerate(calls) if n == 0 or call != calls[n - 1]]
    assert len(collapsed) == len(calls) - 8  # every retry ran right after its failure
    assert [item for call in collapsed for item in call] == list(range(300))


# -- how many run at once ------------------------------------------------------------------


class Overlap:
    """Wraps a processor and measures how many of its calls run at once (``peak``)."""

    def __init__(self, process: Callable[[Items], Items], hold: Callable[[], object]) -> None:
        self._process = process
        self._hold = hold
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.calls = 0

    def __call__(self, items: Items) -> Items:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            self._hold()
            return self._process(items)
        finally:
            with self._lock:
                self.active -= 1


def check_limit(overlap: Overlap, limit: int) -> None:
    """The check the in-flight tests rely on (the mutant tests below show it can fail)."""
    assert overlap.calls > 0
    assert overlap.peak <= limit, f"{overlap.peak} processor calls at once, limit {limit}"


def echo(items: Items) -> Items:
    return [f(item) for item in items]


def test_max_in_flight_bounds_the_processor_calls_running_at_once(runtime: Runtime) -> None:
    limit = 3
    overlap = Overlap(echo, hold=lambda: time.sleep(random.uniform(0.0005, 0.004)))
    batcher = runtime.add_batcher(
        spec(overlap, max_batch_size=10, max_wait=0.002, max_in_flight=limit)
    )
    assert results(batcher.submit_many(range(600))) == [f(n) for n in range(600)]
    check_limit(overlap, limit)
    assert overlap.peak == limit  # and it is used: 60 batches were queued at once


def test_the_overlap_check_catches_a_processor_called_twice_at_once(
    runtime: Runtime, gate: threading.Event
) -> None:
    overlap = Overlap(echo, hold=lambda: gate.wait(HOLD))
    batcher = runtime.add_batcher(spec(overlap, max_batch_size=1, max_in_flight=1))
    future = batcher.submit("by the batcher")
    assert wait_until(lambda: overlap.active == 1, timeout=BOUND)
    thread, out = in_thread(lambda: overlap(["by the test"]))  # a second call, not allowed
    try:
        assert wait_until(lambda: overlap.active == 2, timeout=BOUND)
    finally:
        gate.set()
        thread.join(BOUND)
    assert out == [[f("by the test")]]
    assert future.result(BOUND) == f("by the batcher")
    with pytest.raises(AssertionError, match="2 processor calls at once, limit 1"):
        check_limit(overlap, 1)


class NoFlightLimit(BatchCore):
    """A mutant core: four times as many batches in flight as the settings allow."""

    def _slots(self) -> int:
        return 4 * self.settings.max_in_flight - len(self.running) - len(self.retrying)


class WideLanes:
    """Mutant processor threads: every lane runs four times its limit at once."""

    def __init__(self, threads: Any) -> None:
        self._threads = threads

    def lane(self, limit: int, name: str) -> Any:
        return self._threads.lane(4 * limit, name)


def test_the_overlap_check_catches_an_actor_that_ignores_max_in_flight(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = batch_actor.process_factory_threads
    monkeypatch.setattr(batch_actor, "BatchCore", NoFlightLimit)
    monkeypatch.setattr(batch_actor, "process_factory_threads", lambda: WideLanes(real()))
    limit = 2
    overlap: Overlap

    def hold() -> None:  # until the mutant shows (or 2 s): no flaky thread start-up race
        wait_until(lambda: overlap.peak > limit, timeout=2.0)

    overlap = Overlap(echo, hold=hold)
    batcher = runtime.add_batcher(spec(overlap, max_batch_size=10, max_in_flight=limit))
    actor = actor_of(runtime._batchers.targets[NAME].actor_ref)
    assert type(actor.core) is NoFlightLimit  # type: ignore[union-attr]
    assert results(batcher.submit_many(range(200))) == [f(n) for n in range(200)]
    with pytest.raises(AssertionError, match="processor calls at once, limit 2"):
        check_limit(overlap, limit)


# -- when a batch runs -----------------------------------------------------------------------


def test_a_lone_item_runs_after_max_wait(runtime: Runtime) -> None:
    max_wait = 0.2
    started: list[float] = []

    def process(items: Items) -> Items:
        started.append(time.monotonic())
        return echo(items)

    batcher = runtime.add_batcher(spec(process, max_batch_size=100, max_wait=max_wait))
    submitted = time.monotonic()
    future = batcher.submit("lone")
    assert future.result(BOUND) == f("lone")
    assert len(started) == 1
    waited = started[0] - submitted
    assert waited >= max_wait, f"ran after {waited:.4f}s, before max_wait"
    assert waited < max_wait + 2.0  # generous: "about" max_wait
    assert batcher.stats().flushed_by_time == 1


def test_a_full_batch_runs_at_once(runtime: Runtime) -> None:
    recorder = Recorder()
    batcher = runtime.add_batcher(spec(recorder, max_batch_size=5, max_wait=60))
    began = time.monotonic()
    first = batcher.submit_many(range(4))
    stats = batcher.stats()
    assert (stats.pending, stats.in_flight, recorder.runs) == (4, 0, 0)  # not full: it waits
    last = batcher.submit(4)
    assert results([*first, last]) == [f(n) for n in range(5)]
    assert time.monotonic() - began < 5.0  # nowhere near max_wait
    assert recorder.calls == [[0, 1, 2, 3, 4]]
    stats = batcher.stats()
    assert (stats.flushed_by_size, stats.flushed_by_time, stats.batches) == (1, 0, 1)


# -- flush -----------------------------------------------------------------------------------


def test_flush_runs_a_partial_batch_and_returns_once_it_is_done(runtime: Runtime) -> None:
    recorder = Recorder(before=lambda _items: work())
    batcher = runtime.add_batcher(spec(recorder, max_batch_size=1000, max_wait=60))
    assert batcher.flush(1.0) is True  # nothing handed in: done at once
    futures = batcher.submit_many(range(10))
    assert batcher.flush(BOUND) is True
    assert all(future.done() for future in futures)  # every one, when flush returns
    assert results(futures) == [f(n) for n in range(10)]
    assert recorder.calls == [list(range(10))]
    stats = batcher.stats()
    assert (stats.flushed_by_manual, stats.flushed_by_time, stats.flushed_by_size) == (1, 0, 0)


def unstick(thread: threading.Thread) -> bool:
    """End a thread spinning in ``OneShot.result`` for an answer that never comes (the
    bug below): mark its reply stored so that it returns. Cleanup only."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        reply = frame.f_locals.get("self")
        if isinstance(reply, OneShot):
            reply._stored = True
            return True
        frame = frame.f_back
    return False


def test_flush_returns_false_when_the_processor_is_still_busy_at_the_timeout(
    runtime: Runtime, gate: threading.Event
) -> None:
    recorder = Recorder(before=lambda _items: gate.wait(HOLD))
    batcher = runtime.add_batcher(spec(recorder, max_batch_size=1000, max_wait=60))
    futures = batcher.submit_many(range(3))
    began = time.monotonic()
    flusher, out = in_thread(lambda: batcher.flush(0.2))
    flusher.join(2.0)  # flush(0.2) is back long before this
    took = time.monotonic() - began
    stuck = flusher.is_alive()
    if stuck:
        assert unstick(flusher)
        flusher.join(BOUND)
    assert not stuck, "flush(timeout=0.2) still running after 2 s"
    assert out == [False]
    assert 0.2 <= took < 2.0
    assert recorder.runs == 1 and not any(future.done() for future in futures)
    gate.set()
    assert batcher.flush(BOUND) is True
    assert all(future.done() for future in futures)
    assert results(futures) == [f(n) for n in range(3)]


# -- backpressure ----------------------------------------------------------------------------


def test_a_full_window_blocks_submits_then_refuses_them_and_loses_nothing(
    runtime: Runtime, gate: threading.Event
) -> None:
    recorder = Recorder(before=lambda _items: gate.wait(HOLD))
    batcher = runtime.add_batcher(
        spec(recorder, max_pending=10, max_batch_size=5, max_wait=0.01, max_in_flight=1)
    )
    futures = [batcher.submit(n) for n in range(10)]  # the handle's window: 10 items
    assert batcher.outstanding == 10
    assert wait_until(lambda: recorder.runs == 1, timeout=BOUND)  # 0..4 run, blocked
    for attempt in (lambda: batcher.submit(10, timeout=0.1),
                    lambda: batcher.submit_many([10, 11], timeout=0.1),
                    lambda: batcher.put(10, timeout=0.1)):  # fmt: skip
        began = time.monotonic()
        with pytest.raises(Backpressure, match="max_pending=10"):
            attempt()
        assert 0.1 <= time.monotonic() - began < 5.0  # it waited for room first
    waiting, out = in_thread(lambda: batcher.submit(10, timeout=BOUND))
    try:
        assert wait_until(lambda: bool(batcher._cond._waiters), timeout=BOUND)  # type: ignore[attr-defined]
        assert waiting.is_alive() and not out  # blocked for room
        assert batcher.outstanding == 10
    finally:
        gate.set()
        waiting.join(BOUND)
    assert isinstance(out[0], Future)
    assert results([*futures, out[0]]) == [f(n) for n in range(11)]  # nothing lost
    assert recorder.seen() == list(range(11))  # and nothing refused reached the processor
    stats = batcher.stats()
    assert (stats.accepted, stats.completed, stats.backpressure) == (11, 11, 0)
    assert batcher.outstanding == 0


def test_items_without_room_in_the_batchers_queue_fail_with_backpressure(
    runtime: Runtime, gate: threading.Event
) -> None:
    recorder = Recorder(before=lambda _items: gate.wait(HOLD))
    batcher = runtime.add_batcher(
        spec(recorder, max_pending=10, max_batch_size=5, max_wait=0.01, max_in_flight=1)
    )
    # An empty handle lets one submission past its window; the batcher's queue does not.
    futures = batcher.submit_many(range(25), timeout=0.2)
    assert wait_until(lambda: batcher.stats().backpressure == 10, timeout=BOUND)
    stats = batcher.stats()
    assert (stats.accepted, stats.in_flight, stats.pending, stats.waiting) == (15, 5, 10, 0)
    assert not any(future.done() for future in futures)  # one answer for the submission
    gate.set()
    assert results(futures[:15]) == [f(n) for n in range(15)]
    for future in futures[15:]:
        assert isinstance(future.exception(BOUND), Backpressure)
    assert recorder.seen() == list(range(15))


def test_an_infinite_timeout_on_a_full_window_waits_for_room(
    runtime: Runtime, gate: threading.Event
) -> None:
    """``submit(timeout=math.inf)`` on a full window once raised OverflowError from
    Condition.wait; it waits for room or is refused up front with ValueError (as
    BatchSpec refuses a non-finite submit_timeout)."""
    batcher = runtime.add_batcher(
        spec(Recorder(before=lambda _items: gate.wait(HOLD)), max_pending=2, max_batch_size=2,
             max_wait=0.01)
    )  # fmt: skip
    futures = batcher.submit_many([0, 1])
    waiter, out = in_thread(lambda: batcher.submit(2, timeout=math.inf))
    try:
        # Blocked for room (waiting on the handle's condition), or already refused.
        assert wait_until(
            lambda: bool(batcher._cond._waiters) or not waiter.is_alive(),  # type: ignore[attr-defined]
            timeout=BOUND,
        )
    finally:
        gate.set()
        waiter.join(BOUND)
    assert results(futures) == [f(0), f(1)]
    assert not isinstance(out[0], OverflowError), out
    assert isinstance(out[0], (Future, ValueError)), out


# -- put -------------------------------------------------------------------------------------


def test_put_errors_are_counted_and_reported_to_on_item_error(runtime: Runtime) -> None:
    made: dict[int, Boom] = {}
    reported: list[tuple[Any, BaseException]] = []
    lock = threading.Lock()

    def process(items: Items) -> Items:
        with lock:
            for item in items:
                if item % 2 == 0:
                    made[item] = Boom(f"item {item}")
        return [made[item] if item % 2 == 0 else f(item) for item in items]

    batcher = runtime.add_batcher(
        spec(process, max_batch_size=4, max_wait=0.01,
             on_item_error=lambda item, error: reported.append((item, error)))
    )  # fmt: skip
    for item in range(10):
        batcher.put(item)
    assert batcher.flush(BOUND) is True
    assert wait_until(lambda: len(reported) == 5, timeout=BOUND), reported
    assert batcher.put_errors == 5
    assert sorted(item for item, _ in reported) == [0, 2, 4, 6, 8]
    assert all(error is made[item] for item, error in reported)  # that very error
    stats = batcher.stats()
    assert (stats.put_errors, stats.failed, stats.completed) == (5, 5, 10)
    assert batcher.outstanding == 0


# -- hooks -------------------------------------------------------------------------------------


def test_hooks_hear_every_run_with_its_reason_attempt_and_result(runtime: Runtime) -> None:
    starts: list[BatchEvent] = []
    completes: list[BatchEvent] = []
    raised: list[Poisoned] = []

    def process(items: Items) -> Items:
        work()
        if 3 in items:
            raised.append(Poisoned(f"{items}"))
            raise raised[-1]
        return echo(items)

    batcher = runtime.add_batcher(
        spec(process, max_batch_size=4, max_wait=60, max_in_flight=1, max_attempts=2,
             retry_backoff=0.005, on_batch_start=starts.append,
             on_batch_complete=completes.append)
    )  # fmt: skip
    futures = batcher.submit_many(range(4))
    assert results(futures[:3]) == [f(0), f(1), f(2)]
    assert isinstance(futures[3].exception(BOUND), Poisoned)
    assert wait_until(lambda: len(completes) == 6, timeout=BOUND), completes

    assert all(isinstance(e, BatchEvent) and e.batcher == NAME for e in starts + completes)
    assert [(e.size, e.attempt, e.reason, e.result) for e in starts] == [
        (4, 1, "size", None), (4, 2, "retry", None), (2, 1, "bisect", None),
        (2, 1, "bisect", None), (1, 1, "bisect", None), (1, 1, "bisect", None),
    ]  # fmt: skip
    assert [(e.size, e.attempt, e.reason, e.result) for e in completes] == [
        (4, 1, "size", "retry"), (4, 2, "retry", "bisect"), (2, 1, "bisect", "ok"),
        (2, 1, "bisect", "bisect"), (1, 1, "bisect", "ok"), (1, 1, "bisect", "failed"),
    ]  # fmt: skip
    assert [s.run for s in starts] == [c.run for c in completes]
    assert len({s.run for s in starts}) == 6
    assert all(s.error is None and s.duration_s == 0.0 for s in starts)
    assert all(c.duration_s > 0 for c in completes)
    errors = [c.error for c in completes]
    assert errors[2] is None and errors[4] is None  # the ok runs
    failed_runs = [errors[0], errors[1], errors[3], errors[5]]
    assert [id(e) for e in failed_runs] == [id(r) for r in raised]  # what each run raised
    kinds = [(e.kind, e.node) for e in runtime.events()]
    assert ("batch_failed", NAME) in kinds


def test_a_hook_that_raises_does_not_break_the_batcher(runtime: Runtime) -> None:
    called: Counter[str] = Counter()

    def broken(name: str) -> Callable[..., None]:
        def hook(*_args: Any) -> None:
            called[name] += 1
            raise RuntimeError(f"{name}'s bug")

        return hook

    def process(items: Items) -> Items:
        return [Boom("bad") if item == "bad" else f(item) for item in items]

    batcher = runtime.add_batcher(
        spec(process, max_batch_size=3, max_wait=0.01, on_batch_start=broken("start"),
             on_batch_complete=broken("complete"), on_item_error=broken("item"))
    )  # fmt: skip
    for _ in range(3):
        futures = batcher.submit_many(["a", "bad", "c"])
        assert futures[0].result(BOUND) == f("a")
        assert isinstance(futures[1].exception(BOUND), Boom)
        assert futures[2].result(BOUND) == f("c")
    assert wait_until(lambda: called == {"start": 3, "complete": 3, "item": 3}, timeout=BOUND)
    first = runtime._batchers.targets[NAME].actor_ref
    assert first.is_alive()
    assert batcher.stats().batches == 3


# -- stats -------------------------------------------------------------------------------------


def test_stats_count_batches_reasons_latency_and_what_is_in_flight(
    runtime: Runtime, gate: threading.Event
) -> None:
    recorder = Recorder(before=lambda items: gate.wait(HOLD) if 0 in items else work())
    batcher = runtime.add_batcher(spec(recorder, max_batch_size=10, max_wait=0.5, max_in_flight=1))
    stats = batcher.stats()
    assert isinstance(stats, BatcherStats)
    assert (stats.batcher, stats.batches, stats.mean_batch_size) == (NAME, 0, 0.0)
    assert (stats.latency_ms_p50, stats.latency_ms_p99) == (0.0, 0.0)

    held = batcher.submit_many(range(10))  # a full batch: runs, held at the gate
    assert wait_until(lambda: recorder.runs == 1, timeout=BOUND)
    queued = batcher.submit_many(range(10, 13))
    stats = batcher.stats()
    assert (stats.in_flight, stats.pending, stats.waiting, stats.completed) == (10, 3, 0, 0)
    gate.set()
    assert results(held + queued) == [f(n) for n in range(13)]  # the 3: by time

    many = batcher.submit_many(range(100, 125))  # 2 full batches, then 5 by time
    assert results(many) == [f(n) for n in range(100, 125)]
    last = batcher.submit_many(range(200, 203))
    assert batcher.flush(BOUND) is True  # long before max_wait
    assert results(last) == [f(n) for n in range(200, 203)]

    stats = batcher.stats()
    assert (stats.flushed_by_size, stats.flushed_by_time, stats.flushed_by_manual,
            stats.flushed_by_shutdown) == (3, 2, 1, 0)  # fmt: skip
    assert stats.batches == 6 == recorder.runs
    assert stats.mean_batch_size == pytest.approx(41 / 6)
    assert (stats.accepted, stats.completed, stats.failed, stats.retries) == (41, 41, 0, 0)
    assert (stats.pending, stats.in_flight, stats.waiting) == (0, 0, 0)
    assert 0 < stats.latency_ms_p50 <= stats.latency_ms_p95 <= stats.latency_ms_p99
    assert stats.latency_ms_p99 >= 500 * 0.9  # the items that waited out max_wait
    assert stats.as_dict()["batches"] == 6


# -- the actor crashes -------------------------------------------------------------------------


def test_a_crashed_batcher_answers_everything_it_had_and_runs_the_running_batch_again(
    runtime: Runtime, gate: threading.Event
) -> None:
    recorder = Recorder(before=lambda items: gate.wait(HOLD) if 0 in items else None)
    batcher = runtime.add_batcher(spec(recorder, max_batch_size=5, max_wait=60))
    resolved: Counter[int] = Counter()
    running = batcher.submit_many(range(5))  # full: runs, held in the processor
    assert wait_until(lambda: recorder.runs == 1, timeout=BOUND)
    queued = batcher.submit_many(range(5, 8))  # waits for max_wait (a minute)
    futures = running + queued

    def counting(n: int) -> Callable[[Future[Any]], None]:
        return lambda _future: resolved.update([n])

    for n, future in enumerate(futures):
        future.add_done_callback(counting(n))

    crash(runtime)
    after = batcher.submit_many(range(8, 10))  # the new incarnation takes these too
    assert not any(future.done() for future in futures + after)
    gate.set()  # the first run ends; its outcome is the old incarnation's: it runs again
    assert batcher.flush(BOUND) is True
    assert results(futures + after) == [f(n) for n in range(10)]
    assert wait_until(lambda: sum(resolved.values()) == 8, timeout=BOUND)
    assert resolved == dict.fromkeys(range(8), 1)  # each future resolved exactly once
    seen = Counter(recorder.seen())
    assert all(seen[n] >= 2 for n in range(5)), seen  # at least once: here, twice
    assert all(seen[n] == 1 for n in range(5, 10)), seen
    stats = batcher.stats()
    assert (stats.accepted, stats.completed, stats.failed) == (10, 10, 0)
    kinds = [(e.kind, e.node) for e in runtime.events()]
    node = f"root/batcher:{NAME}"
    assert ("failed", node) in kinds and ("restarted", node) in kinds
    assert kinds.index(("failed", node)) < kinds.index(("restarted", node))


def test_submitters_blocked_on_a_full_window_get_through_a_restart(
    runtime: Runtime, gate: threading.Event
) -> None:
    recorder = Recorder(before=lambda items: gate.wait(HOLD) if 0 in items else None)
    batcher = runtime.add_batcher(spec(recorder, max_pending=4, max_batch_size=4, max_wait=0.01))
    held = batcher.submit_many(range(4))
    assert wait_until(lambda: recorder.runs == 1, timeout=BOUND)
    blocked, out = in_thread(lambda: batcher.submit_many(range(4, 8), timeout=BOUND))
    crash(runtime)
    gate.set()
    blocked.join(BOUND)
    assert isinstance(out[0], list), out
    assert results(held + out[0]) == [f(n) for n in range(8)]
    assert batcher.outstanding == 0


# -- shutdown ----------------------------------------------------------------------------------


def test_shutdown_processes_what_is_queued(runtime: Runtime) -> None:
    starts: list[BatchEvent] = []
    during: list[BatcherStats] = []
    batcher: Batcher

    def process(items: Items) -> Items:
        during.append(batcher.stats())
        return echo(items)

    batcher = runtime.add_batcher(
        spec(process, max_batch_size=100, max_wait=60, on_batch_start=starts.append)
    )
    futures = batcher.submit_many(range(7))
    assert batcher.stats().pending == 7
    report = runtime.shutdown(timeout=5)
    assert report.clean, report
    assert report.unflushed == {}
    assert [future.result(0) for future in futures] == [f(n) for n in range(7)]
    assert [(e.size, e.reason) for e in starts] == [(7, "shutdown")]
    assert during[0].flushed_by_shutdown == 1


def test_shutdown_fails_what_a_blocked_processor_still_holds(
    runtime: Runtime, gate: threading.Event
) -> None:
    recorder = Recorder(before=lambda _items: gate.wait(HOLD))
    batcher = runtime.add_batcher(spec(recorder, max_batch_size=5, max_wait=60, max_in_flight=1))
    futures = batcher.submit_many(range(5))  # runs, blocked
    assert wait_until(lambda: recorder.runs == 1, timeout=BOUND)
    futures += batcher.submit_many(range(5, 8))  # queued behind it
    # Let the processor go once the deadline has failed its items (or the lane would
    # wait for it): it returns into a batcher that has moved on.
    futures[0].add_done_callback(lambda _f: gate.set())
    began = time.monotonic()
    report = runtime.shutdown(timeout=0.3)
    assert time.monotonic() - began < 5.0
    assert report.unflushed == {NAME: 8}
    assert not report.clean
    for future in futures:
        assert isinstance(future.exception(0), RuntimeStopped)
    assert recorder.runs == 1  # the queued 3 never ran


def test_after_shutdown_the_handle_refuses_work(runtime: Runtime) -> None:
    batcher = runtime.add_batcher(spec(echo, max_wait=0.01))
    assert batcher.submit(1).result(BOUND) == f(1)
    runtime.shutdown(timeout=5)
    # submit does not raise: it answers at once with a failed future (the handle
    # resolves every refusal through the future).
    future = batcher.submit(2)
    assert future.done()
    error = future.exception(0)
    assert isinstance(error, ActorStopped) and not isinstance(error, ActorRestarted)
    assert isinstance(error, LessorError)
    batcher.put(3)
    assert batcher.put_errors == 1
    with pytest.raises(ActorStopped):
        batcher.stats()
    assert batcher.flush(0.5) is True  # nothing of its own is left
    assert batcher.outstanding == 0
    with pytest.raises(RuntimeStopped):
        runtime.add_batcher(BatchSpec("late", echo))


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_refused(runtime: Runtime) -> None:
    batcher = runtime.add_batcher(spec(echo))
    assert runtime.batcher(NAME) is batcher
    with pytest.raises(TypeError, match="BatchSpec"):
        runtime.add_batcher("sink")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exists already"):
        runtime.add_batcher(spec(echo))
    with pytest.raises(NoSuchBatcher, match="'nope'"):
        runtime.batcher("nope")
    for call in (lambda: batcher.submit(1, timeout=0), lambda: batcher.submit(1, timeout=-1),
                 lambda: batcher.submit_many([1], timeout=0),
                 lambda: batcher.put(1, timeout=0),
                 lambda: batcher.submit(1, timeout=math.nan)):  # fmt: skip
        with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0"):
            call()
    assert batcher.outstanding == 0
    assert batcher.stats().accepted == 0  # nothing refused reached the batcher
