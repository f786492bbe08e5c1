"""The actor turn: decide under it, act outside it (issue: hardening, defect 1).

Each test here failed on the design where replies were sent under the turn: a
reply that re-entered the pool deadlocked it, a grant its caller no longer took
was lost, and a request that arrived before ``on_start`` finished ran the factory
on the caller's thread.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lessor import (
    Acquire,
    AcquireTimeout,
    GetStats,
    Lease,
    PoolHandle,
    PoolSpec,
    Release,
    TokenFactory,
    start_pool,
)
from lessor.actors import base
from lessor.actors.base import LessorActor
from lessor.actors.pool import PoolActor
from lessor.actors.reply import OneShot
from lessor.handles.local import LocalRoute
from tests.support.helpers import wait_until

WORKER = "worker:test.0.1:1"


@pytest.fixture
def pool() -> Iterator[PoolHandle]:
    handle = start_pool(PoolSpec("p", TokenFactory(), max_size=1))
    yield handle
    if handle.actor_ref.is_alive():
        handle.stop(timeout=5)


def actor_of(handle: PoolHandle) -> LessorActor:
    actor = base.actor_of(handle.actor_ref)
    assert actor is not None
    return actor


class RefusingReply:
    """A caller that is gone by the time its grant comes (its worker just died)."""

    def __init__(self) -> None:
        self.offered: list[Any] = []

    def set(self, value: Any = None) -> bool:
        self.offered.append(value)
        return False

    def set_exception(self, exc_info: Any = None) -> bool:
        return False


class ReenteringReply:
    """A reply whose delivery talks to the pool again, as a failed socket send once did."""

    def __init__(self, act: Callable[[Lease], None]) -> None:
        self.act = act
        self.done = threading.Event()

    def set(self, value: Any = None) -> bool:
        self.act(value)
        self.done.set()
        return True

    def set_exception(self, exc_info: Any = None) -> bool:
        self.done.set()
        return True


def test_a_grant_nobody_takes_goes_to_the_next_waiter(pool: PoolHandle) -> None:
    held = pool.acquire(timeout=1)
    gone = RefusingReply()
    actor_of(pool).deliver(Acquire("p", 5.0), gone, WORKER)  # first in the queue
    assert wait_until(lambda: pool.stats().waiting == 1)
    got: list[Lease] = []
    granted, finish = threading.Event(), threading.Event()

    def second_waiter() -> None:
        got.append(pool.acquire(timeout=5))
        granted.set()
        finish.wait(10)
        pool.release(got[0])

    waiter = threading.Thread(target=second_waiter)
    waiter.start()
    assert wait_until(lambda: pool.stats().waiting == 2)
    pool.release(held)
    try:
        assert granted.wait(10), "the refused grant was lost: the next waiter never got it"
        assert len(gone.offered) == 1 and isinstance(gone.offered[0], Lease)
        assert [lease.resource for lease in got] == [held.resource]
        stats = pool.stats()
        assert (stats.leased, stats.waiting, stats.size) == (1, 0, 1)
    finally:
        finish.set()
        waiter.join(10)
    assert wait_until(lambda: pool.stats().idle == 1)
    stats = pool.stats()
    assert (stats.acquired, stats.released, stats.reclaimed) == (3, 3, 0)


@pytest.mark.timeout(30)
def test_a_reply_may_call_back_into_the_pool_without_deadlock(pool: PoolHandle) -> None:
    actor = actor_of(pool)
    # Delivering the grant releases it again and reads the pool's stats, on the
    # delivering thread: both take the pool's turn, which the old design still held
    # while replying (a failed socket send gave the lease back exactly this way).
    stats: list[Any] = []

    def give_back(lease: Lease) -> None:
        actor.deliver(Release(lease.id), None, WORKER)
        answer = OneShot()
        actor.deliver(GetStats(), answer, WORKER)
        stats.append(answer.get(5))

    reply = ReenteringReply(give_back)
    runner = threading.Thread(target=actor.deliver, args=(Acquire("p", 5.0), reply, WORKER))
    runner.start()
    runner.join(10)
    alive = runner.is_alive()
    assert reply.done.wait(10), "the pool deadlocked on a reply that called back into it"
    assert not alive
    assert stats and stats[0].leased == 0
    assert pool.stats().idle == 1


def test_many_callers_timing_out_against_grants_lose_no_lease(pool: PoolHandle) -> None:
    """Callers give up just as grants reach them: each lease is used or comes back."""
    outcomes: list[str] = []
    lock = threading.Lock()

    def impatient() -> None:
        for _ in range(40):
            try:
                lease = pool.acquire(timeout=0.002)
            except AcquireTimeout:
                with lock:
                    outcomes.append("timeout")
                continue
            with lock:
                outcomes.append("granted")
            pool.release(lease)

    threads = [threading.Thread(target=impatient) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 240
    assert wait_until(lambda: pool.stats().idle == 1)
    stats = pool.stats()
    assert (stats.leased, stats.waiting) == (0, 0)
    assert stats.acquired == stats.released == outcomes.count("granted")


class GatedPool(PoolActor):
    """A pool whose on_start waits for the test, to deliver a request in that window."""

    gate = threading.Event()
    entered = threading.Event()

    def on_start(self) -> None:
        type(self).entered.set()
        assert type(self).gate.wait(10)
        super().on_start()


class ThreadRecordingFactory(TokenFactory):
    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def create(self) -> Any:
        self.threads.append(threading.current_thread().name)
        return super().create()


def test_a_request_before_on_start_waits_for_it_and_never_runs_the_factory_here() -> None:
    factory = ThreadRecordingFactory()
    GatedPool.gate.clear()
    GatedPool.entered.clear()
    ref = GatedPool.start(PoolSpec("p", factory, max_size=1))
    try:
        assert GatedPool.entered.wait(5)
        reply = OneShot()
        actor_of(PoolHandle(LocalRoute(ref, PoolSpec("p", factory))))  # the actor exists already
        actor_of(PoolHandle(LocalRoute(ref, PoolSpec("p", factory)))).deliver(
            Acquire("p", 5.0), reply, WORKER
        )
        assert factory.threads == []  # nothing ran on this thread
        GatedPool.gate.set()
        lease = reply.get(5)
        assert isinstance(lease, Lease)
        assert factory.threads and threading.current_thread().name not in factory.threads
    finally:
        GatedPool.gate.set()
        ref.stop(block=True, timeout=5)


def test_a_very_long_timeout_waits_and_is_served(pool: PoolHandle) -> None:
    held = pool.acquire(timeout=1)
    got: list[Any] = []

    def patient() -> None:
        try:
            lease = pool.acquire(timeout=1e10)  # past what a lock wait accepts
            got.append(lease)
            pool.release(lease)
        except BaseException as exc:
            got.append(exc)

    waiter = threading.Thread(target=patient)
    waiter.start()
    assert wait_until(lambda: pool.stats().waiting == 1 or bool(got))
    pool.release(held)
    waiter.join(10)
    assert len(got) == 1 and isinstance(got[0], Lease), got
    assert pool.stats().idle == 1


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_ctrl_c_while_waiting_loses_no_lease(pool: PoolHandle) -> None:
    held = pool.acquire(timeout=1)
    main = threading.main_thread().ident
    assert main is not None
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt_once_queued() -> None:
        if wait_until(lambda: pool.stats().waiting == 1):
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_queued)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pool.acquire(timeout=30)
    finally:
        interrupter.join(10)
        signal.signal(signal.SIGINT, previous)
    assert wait_until(lambda: pool.stats().waiting == 0)
    pool.release(held)
    assert wait_until(lambda: pool.stats().idle == 1)
    stats = pool.stats()
    assert (stats.leased, stats.acquired, stats.released) == (0, 1, 1)
    assert os.getpid() > 0


def test_the_pykka_internals_lessor_uses_are_those_of_this_pykka() -> None:
    from lessor.actors import _pykka_compat as compat

    assert int(compat.PYKKA_VERSION.split(".")[0]) in compat.SUPPORTED
    stopped = PoolActor.start(PoolSpec("p", TokenFactory(), max_size=1))
    inbox = stopped.actor_inbox
    stopped.stop(block=False)  # puts pykka's stop message in the inbox
    stopped.actor_stopped.wait(5)
    assert compat.is_stop(Release("x")) is False
    assert inbox.qsize() == 0  # the actor took its stop message and answered it


def test_a_reply_is_either_answered_or_cancelled_never_both() -> None:
    """A caller interrupted while waiting (Ctrl-C) abandons the Acquire: if the answer
    won the claim it must still read it, without blocking, to give the lease back;
    if its cancel won, a late answer is refused (and the actor releases the grant)."""
    answered = OneShot()
    assert answered.set("lease")
    read: list[Any] = []
    reader = threading.Thread(target=lambda: read.append((answered.cancel(), answered.result())))
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading the answer blocked"
    assert read == [(False, "lease")]

    gave_up = OneShot()
    with pytest.raises(TimeoutError):
        gave_up.get(timeout=0.001)
    assert gave_up.set("late lease") is False  # refused: the actor takes it back
    assert gave_up.cancel() is False


def test_a_remote_cancel_drops_the_wait_or_gives_back_the_grant(pool: PoolHandle) -> None:
    """What the node does with a worker's CANCEL: whichever side won the claim decides."""
    held = pool.acquire(timeout=1)
    waiting = OneShot()
    actor_of(pool).deliver(Acquire("p", 5.0), waiting, WORKER)
    assert wait_until(lambda: pool.stats().waiting == 1)
    pool.cancel(waiting, WORKER)  # before any grant: the wait is dropped
    assert wait_until(lambda: pool.stats().waiting == 0)
    pool.release(held)
    assert wait_until(lambda: pool.stats().idle == 1)

    granted = OneShot()
    actor_of(pool).deliver(Acquire("p", 5.0), granted, WORKER)
    assert isinstance(granted.get(5), Lease)  # the grant won: the caller never read it
    pool.cancel(granted, WORKER)
    assert wait_until(lambda: pool.stats().idle == 1)
    stats = pool.stats()
    assert (stats.leased, stats.acquired, stats.released) == (0, 2, 2)
