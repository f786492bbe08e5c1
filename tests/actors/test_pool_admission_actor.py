"""Pool admission through a real PoolActor, with real threads.

An ``Admission(holder, paused, why)`` from in-process is applied: the paused
holder's Acquire waits (and times out saying why) while others are served, and a
resume serves it. From a worker holder it is refused with ProtocolError. A pause
is kept in the pool's lineage, so a restarted pool still pauses that holder; a
holder that is gone takes its pause with it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lessor import (
    AcquireTimeout,
    ChildSpec,
    GetStats,
    Lease,
    PoolHandle,
    PoolSpec,
    Runtime,
    TokenFactory,
    start_pool,
)
from lessor.actors.base import LessorActor, actor_of
from lessor.actors.pool import PoolActor, PoolLineage
from lessor.actors.reply import OneShot
from lessor.errors import ProtocolError
from lessor.handles.local import LocalRoute
from lessor.holder import Holder, current_holder
from lessor.protocol.messages import Admission
from lessor.runtime.memory import RuntimeMemory
from lessor.specs.memory import MemorySpec
from tests.support.actors import crash_actor
from tests.support.helpers import in_thread, wait_until

PAUSED_TEXT = "admission is paused by the memory manager"
BLOCKED = 0.3  # seconds a paused acquire is watched for not returning
RESTART_BOUND = 10.0


@pytest.fixture
def pool() -> Iterator[PoolHandle]:
    handle = start_pool(PoolSpec("p", TokenFactory(), max_size=2))
    yield handle
    if handle.actor_ref.is_alive():
        handle.stop(timeout=5)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(max_restarts=10, handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


def actor(pool: PoolHandle) -> PoolActor:
    found: LessorActor | None = actor_of(pool.actor_ref)
    assert isinstance(found, PoolActor)
    return found


def borrow_and_return(pool: PoolHandle) -> Lease:
    """On a thread of its own: a lease, given back at once (its holder is served)."""
    thread, out = in_thread(lambda: _borrow_and_return(pool))
    thread.join(10)
    assert not thread.is_alive()
    (result,) = out
    assert isinstance(result, Lease), result
    return result


def _borrow_and_return(pool: PoolHandle) -> Lease:
    lease = pool.acquire(timeout=5)
    pool.release(lease)
    return lease


class PausedBorrower:
    """A thread that tells its holder, then (when told to) acquires and gives back.

    ``done`` is set once acquire returned or raised; ``got`` holds what it did.
    """

    def __init__(self, pool: PoolHandle, timeout: float = 10.0) -> None:
        self.pool = pool
        self.timeout = timeout
        self.ready = threading.Event()
        self.go = threading.Event()
        self.done = threading.Event()
        self.holder: Holder | None = None
        self.got: list[Any] = []
        self.thread = threading.Thread(target=self._run, name="paused-borrower")
        self.thread.start()
        assert self.ready.wait(5)

    def _run(self) -> None:
        self.holder = current_holder()
        self.ready.set()
        if not self.go.wait(10):
            return
        try:
            lease = self.pool.acquire(timeout=self.timeout)
            self.got.append(lease)
            self.pool.release(lease)
        except Exception as exc:
            self.got.append(exc)
        finally:
            self.done.set()

    def stop(self) -> None:
        self.go.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


# -- in-process admission ----------------------------------------------------------------------


def test_a_paused_thread_blocks_in_acquire_while_others_are_served_until_resumed(
    pool: PoolHandle,
) -> None:
    borrower = PausedBorrower(pool)
    try:
        assert borrower.holder is not None
        assert pool.ask(Admission(str(borrower.holder), True, "rss 91%")) is None
        assert actor(pool).core.paused == {borrower.holder: "rss 91%"}
        borrower.go.set()
        assert wait_until(lambda: pool.stats().waiting == 1)
        assert not borrower.done.wait(BLOCKED), f"a paused holder got {borrower.got}"
        s = pool.stats()
        assert (s.waiting, s.size, s.creating, s.leased) == (1, 0, 0, 0)  # no creation for it
        # Another thread is served (a resource is made for it) and gives it back ...
        other = borrow_and_return(pool)
        assert other.holder != borrower.holder
        # ... and the resource stays idle next to the paused waiter.
        s = pool.stats()
        assert (s.waiting, s.idle, s.size, s.leased, s.acquired) == (1, 1, 1, 0, 1)
        assert not borrower.done.wait(BLOCKED), f"a paused holder got {borrower.got}"
        # Resumed: it gets the idle resource.
        pool.ask(Admission(str(borrower.holder), False))
        assert borrower.done.wait(5)
        (lease,) = borrower.got
        assert isinstance(lease, Lease), lease
        assert lease.holder == borrower.holder
        assert lease.resource == other.resource
    finally:
        borrower.stop()
    assert actor(pool).core.paused == {}
    s = pool.stats()
    assert (s.acquired, s.waiting, s.timeouts, s.size) == (2, 0, 0, 1)


def test_pausing_everyone_blocks_every_thread_until_resumed(pool: PoolHandle) -> None:
    first, second = PausedBorrower(pool), PausedBorrower(pool)
    try:
        pool.ask(Admission("", True, "machine at 93%"))
        first.go.set()
        second.go.set()
        assert wait_until(lambda: pool.stats().waiting == 2)
        assert not first.done.wait(BLOCKED) and not second.done.is_set()
        with pytest.raises(AcquireTimeout, match=f"{PAUSED_TEXT}: machine at 93%"):
            pool.acquire(timeout=0.1)  # this thread too
        pool.ask(Admission("", False))
        assert first.done.wait(5) and second.done.wait(5)
        assert all(isinstance(got, Lease) for got in (*first.got, *second.got))
    finally:
        first.stop()
        second.stop()
    assert pool.stats().acquired == 2


def test_a_paused_acquire_times_out_saying_why(pool: PoolHandle) -> None:
    me = current_holder()
    pool.ask(Admission(str(me), True, "rss 91% of 512 MiB"))
    with pytest.raises(AcquireTimeout, match=f"{PAUSED_TEXT}: rss 91% of 512 MiB"):
        pool.acquire(timeout=0.1)
    s = pool.stats()
    assert (s.timeouts, s.waiting, s.size) == (1, 0, 0)
    pool.ask(Admission(str(me), False))
    with pool.lease(timeout=5) as resource:
        assert resource is not None


def test_leases_out_when_the_pause_comes_stay_valid(pool: PoolHandle) -> None:
    me = current_holder()
    lease = pool.acquire(timeout=5)
    pool.ask(Admission(str(me), True, "rss"))
    renewed = pool.renew(lease, 30.0)
    assert renewed.id == lease.id
    pool.release(lease)
    s = pool.stats()
    assert (s.leased, s.idle, s.released) == (0, 1, 1)
    with pytest.raises(AcquireTimeout, match=PAUSED_TEXT):
        pool.acquire(timeout=0.05)  # the idle resource is not granted to it


# -- who may send it -----------------------------------------------------------------------------


def test_an_admission_from_a_worker_holder_is_refused(pool: PoolHandle) -> None:
    worker = Holder.worker("w.0.1", 1234)
    reply = OneShot()
    actor(pool).deliver(Admission("", True, "a worker's wish"), reply, worker)
    with pytest.raises(ProtocolError, match="not a worker's"):
        reply.get(5)
    reply = OneShot()
    actor(pool).deliver(Admission(str(worker), True, "its own"), reply, worker)
    with pytest.raises(ProtocolError):
        reply.get(5)
    assert actor(pool).core.paused == {}
    lease = pool.acquire(timeout=5)  # nothing was paused, and the pool carries on
    pool.release(lease)
    assert actor(pool).accepting


def test_an_admission_from_in_process_is_applied(pool: PoolHandle) -> None:
    reply = OneShot()
    target = Holder.worker("w.0.1", 1234)
    actor(pool).deliver(Admission(str(target), True, "rss"), reply, Holder.thread(1, 2, 3))
    assert reply.get(5) is None
    assert actor(pool).core.paused == {target: "rss"}
    reply = OneShot()
    actor(pool).deliver(Admission(str(target), False), reply, Holder.thread(1, 2, 3))
    assert reply.get(5) is None
    assert actor(pool).core.paused == {}


# -- restarts ------------------------------------------------------------------------------------


def test_a_pause_survives_a_restart_of_a_supervised_pool(runtime: Runtime) -> None:
    pool = runtime.add_pool(PoolSpec("p", TokenFactory(), max_size=2))
    me = current_holder()
    pool.ask(Admission(str(me), True, "rss 91%"))
    with pytest.raises(AcquireTimeout, match=PAUSED_TEXT):
        pool.acquire(timeout=0.05)
    first = actor(pool)
    crash_actor(pool.route, RESTART_BOUND)
    again = actor(pool)
    assert again is not first and again.epoch != first.epoch
    assert again.core.paused == {me: "rss 91%"}
    # Still paused: it times out saying why, while another thread is served.
    with pytest.raises(AcquireTimeout, match=f"{PAUSED_TEXT}: rss 91%"):
        pool.acquire(timeout=0.1)
    other = borrow_and_return(pool)
    assert other.holder != me
    assert (pool.stats().idle, pool.stats().acquired) == (1, 1)
    with pytest.raises(AcquireTimeout, match=PAUSED_TEXT):
        pool.acquire(timeout=0.05)  # even with a resource idle
    pool.ask(Admission(str(me), False))
    lease = pool.acquire(timeout=5)
    assert lease.holder == me and lease.resource == other.resource
    pool.release(lease)
    crash_actor(pool.route, RESTART_BOUND)  # a resume is remembered too
    assert actor(pool).core.paused == {}


def test_a_holder_that_is_gone_takes_its_pause_with_it_across_a_restart(
    runtime: Runtime,
) -> None:
    lineage = PoolLineage()
    spec = PoolSpec("p", TokenFactory(), max_size=1)
    child = runtime.add_child(ChildSpec("p", PoolActor, (spec,), {"lineage": lineage}))
    pool = PoolHandle(LocalRoute(child, spec))
    borrower = PausedBorrower(pool, timeout=0.05)
    assert borrower.holder is not None
    gone = borrower.holder
    kept = Holder.worker("w.0.1", 1234)
    pool.ask(Admission(str(gone), True, "rss"))
    pool.ask(Admission(str(kept), True, "leak"))
    assert lineage.paused == {gone: "rss", kept: "leak"}
    borrower.stop()  # it asks, times out (paused) and ends: its holder is gone
    (timeout,) = borrower.got
    assert isinstance(timeout, AcquireTimeout) and PAUSED_TEXT in str(timeout)
    assert wait_until(lambda: gone not in lineage.paused)
    assert lineage.paused == {kept: "leak"}
    assert pool.ask(GetStats()).waiting == 0
    crash_actor(pool.route, RESTART_BOUND)
    assert actor(pool).core.paused == {kept: "leak"}


def test_the_runtime_memory_manager_pauses_and_resumes_a_pool(pool: PoolHandle) -> None:
    """RuntimeMemory.admission, as the memory actor calls it, reaches the pool."""
    target = str(Holder.worker("w.0.1", 1234))
    memory = RuntimeMemory(MemorySpec(), lambda: {"p": pool}, list, lambda: None, list)
    memory.admission("w.0.1", target, True, "rss 91%")
    assert actor(pool).core.paused == {target: "rss 91%"}
    memory.admission("w.0.1", target, False, "rss 70%")
    assert actor(pool).core.paused == {}


# -- bugs these found, fixed since ---------------------------------------------------


def test_a_restarted_pool_with_a_pause_and_min_size_still_makes_resources(
    runtime: Runtime,
) -> None:
    pool = runtime.add_pool(PoolSpec("p", TokenFactory(), min_size=1, max_size=1))
    assert wait_until(lambda: pool.stats().size == 1)
    pool.ask(Admission(str(Holder.worker("w.0.1", 1234)), True, "rss"))  # not this thread
    crash_actor(pool.route, RESTART_BOUND)
    assert wait_until(lambda: pool.stats().size == 1, timeout=2), pool.stats()
    lease = pool.acquire(timeout=1)
    pool.release(lease)
