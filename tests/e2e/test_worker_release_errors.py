"""A bad release raises in a worker as it does in-process, with no round trip.

The worker's ledger (:mod:`lessor.handles.ownership`) decides DoubleRelease,
ForeignLease, UnknownLease, ExpiredLease and StaleLease before anything is sent:
a refused release sends no frame and changes nothing, and a good one stays a
one-way frame that does not wait for the runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from lessor import (
    DoubleRelease,
    ExpiredLease,
    LeaseExpired,
    PoolSpec,
    Runtime,
    StaleLease,
    TokenFactory,
    UnknownLease,
)
from lessor.handles.ops import LeaseOps
from lessor.protocol.messages import Acquire, Describe, Lease, Message, PoolInfo, Release
from lessor.transport.node import ENV_ADDRESS, ENV_AUTHKEY, Node
from lessor.worker.client import Client
from tests.support.actors import crashable
from tests.support.helpers import in_thread, wait_until
from tests.workers import release_targets
from tests.workers.release_targets import OTHER, POOL, SHORT

WAIT = 10.0
MODES = [False, True]
MODE_IDS = ["uncached", "cached"]


@pytest.fixture(scope="module")
def worker_runs() -> dict[str, Any]:
    """Every scenario, run in real worker processes, once per handle kind."""
    with Runtime(handle_signals=False) as runtime:
        pools = {
            name: runtime.add_pool(PoolSpec(name, TokenFactory(), max_size=1, lease_ttl=ttl))
            for name, ttl in ((POOL, None), (SHORT, 0.5), (OTHER, None))
        }
        runs: dict[str, Any] = {}
        for cache in MODES:
            jobs = [[scenario, cache] for scenario in release_targets.SCENARIOS]
            outcomes = runtime.map(release_targets.misuse, jobs, workers=1, timeout=120)
            for (scenario, _), outcome in zip(jobs, outcomes, strict=True):
                runs[f"{scenario} {cache}"] = outcome
        # Every worker has exited: what the pools saw, all told.
        runs["stats"] = {name: pool.stats() for name, pool in pools.items()}
    return runs


@pytest.mark.parametrize("cache", MODES, ids=MODE_IDS)
@pytest.mark.parametrize(
    ("scenario", "error"),
    [
        ("double", "DoubleRelease"),
        ("foreign", "ForeignLease"),
        ("other_process", "ForeignLease"),
        ("unknown", "UnknownLease"),
        ("expired", "ExpiredLease"),
    ],
)
def test_a_bad_release_raises_sends_nothing_and_loses_nothing(
    worker_runs: dict[str, Any], scenario: str, error: str, cache: bool
) -> None:
    run = worker_runs[f"{scenario} {cache}"]
    assert run["raised"] == error
    assert run["frames"] == 0  # decided in the worker: no frame, so no round trip
    assert run["next_ok"]  # max_size=1: the lease came back to the pool afterwards
    if "owner" in run:
        assert run["owner"] == ""  # the holder could still release it: nothing changed
    if scenario == "foreign":
        assert run["leased"] == 1  # still held while the other thread was refused
    if scenario == "unknown":
        assert (run["never"], run["other_pool"]) == ("UnknownLease", "UnknownLease")
    if scenario == "expired":
        assert run["told"]


@pytest.mark.parametrize("cache", MODES, ids=MODE_IDS)
def test_a_good_release_is_one_frame_or_none(worker_runs: dict[str, Any], cache: bool) -> None:
    run = worker_runs[f"fine {cache}"]
    assert run["raised"] == ""
    assert run["frames"] == (0 if cache else 1)  # parked here, or one one-way Release


def test_the_pools_saw_every_grant_come_back_once(worker_runs: dict[str, Any]) -> None:
    stats = worker_runs["stats"]
    for name in (POOL, OTHER):
        assert (stats[name].leased, stats[name].reclaimed) == (0, 0), name
        assert stats[name].acquired == stats[name].released, name
    short = stats[SHORT]
    assert (short.leased, short.expired) == (0, len(MODES))  # one ttl expiry per handle kind
    assert short.acquired == short.released + short.expired


# -- in this process, against a node whose pool can be stalled or crashed -----------------


class StallingPool:
    """A node target that grants at once and can stop reading the wire (``gate``)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.told: list[Message] = []
        self.serial = 0

    def deliver(self, message: Message, reply: Any, holder: str) -> None:
        if isinstance(message, Describe):  # client.pool() asks for the pool once, at once
            reply.set(PoolInfo("p", 30.0, 1))
        elif isinstance(message, Acquire):
            self.serial += 1
            reply.set(Lease(f"p/e1/{self.serial}", "p", "token", str(holder), 0.0, None))
        else:
            self.gate.wait(WAIT)  # the node's reader is stuck here: the runtime is unresponsive
            self.told.append(message)

    def cancel(self, reply: Any, holder: str) -> None:
        reply.cancel()


@pytest.fixture
def stalled() -> Iterator[tuple[Client, StallingPool, Node]]:
    node, pool = Node(), StallingPool()
    node.register("p", pool)
    env = node.env("w")
    client = Client(env[ENV_ADDRESS], bytes.fromhex(env[ENV_AUTHKEY]), "w")
    client.on_lost = lambda: None  # this is the test process: never SIGTERM it
    try:
        yield client, pool, node
    finally:
        pool.gate.set()
        client.close()
        node.close()


@pytest.mark.parametrize("cache", MODES, ids=MODE_IDS)
def test_releases_do_not_wait_for_an_unresponsive_runtime(
    stalled: tuple[Client, StallingPool, Node], cache: bool
) -> None:
    client, pool, _ = stalled
    slots = client.pool("p", cache=cache)
    first, held = slots.acquire(timeout=WAIT), slots.acquire(timeout=WAIT)
    stuck = client.pool("p", cache=False)
    pool.gate.clear()
    blocker = stuck.acquire(timeout=WAIT)
    stuck.release(blocker)  # the node's reader now waits on the gate with this one

    slots.release(first)  # good: parked, or a one-way frame into the socket
    raised = []
    for bad in (first, replace(first, id="p/e1/999")):
        try:
            slots.release(bad)
        except (DoubleRelease, UnknownLease) as exc:
            raised.append(type(exc).__name__)
    assert raised == ["DoubleRelease", "UnknownLease"]
    assert pool.told == []  # the node's reader is still stuck: nothing waited for it
    pool.gate.set()
    slots.release(held)
    stuck.acquire(timeout=WAIT)  # answered after every frame sent before it was read
    sent = [blocker, *([] if cache else [first, held])]  # a cached handle parked its two
    assert pool.told == [Release(lease.id) for lease in sent]


def test_a_lease_the_pool_says_expired_is_refused_at_once(
    stalled: tuple[Client, StallingPool, Node],
) -> None:
    client, _, node = stalled
    slots = client.pool("p", cache=False)
    lease = slots.acquire(timeout=WAIT)
    noticed = threading.Event()
    client.on_push(lambda message: isinstance(message, LeaseExpired) and noticed.set())
    node.push("w", LeaseExpired(lease.id, "p"))
    assert noticed.wait(WAIT)
    sent = client.frames_sent
    with pytest.raises(ExpiredLease):
        slots.release(lease)
    assert client.frames_sent == sent


def test_a_lease_of_an_earlier_incarnation_is_stale_once_a_newer_one_granted() -> None:
    """Only a grant by the new incarnation tells a worker that the pool restarted."""
    runtime = Runtime(max_restarts=10, handle_signals=False)
    client = None
    try:
        pool = crashable(runtime, PoolSpec("p", TokenFactory(), max_size=3))
        runtime.node.register("p", pool)
        env = runtime.node.env("w")
        client = Client(env[ENV_ADDRESS], bytes.fromhex(env[ENV_AUTHKEY]), "w")
        client.on_lost = lambda: None
        slots: LeaseOps = client.pool("p", cache=False)
        released, orphan = slots.acquire(timeout=WAIT), slots.acquire(timeout=WAIT)
        slots.release(released)
        with pytest.raises(DoubleRelease):  # the same incarnation: a double release
            slots.release(released)
        assert wait_until(lambda: pool.stats().leased == 1)  # the one-way Release arrived
        first = pool.actor_ref
        first.tell("crash")
        assert wait_until(lambda: pool.actor_ref is not first)
        fresh = slots.acquire(timeout=WAIT)  # granted by the new incarnation
        assert fresh.id.split("/")[1] != released.id.split("/")[1]
        sent = client.frames_sent
        for stale in (released, replace(released, id=f"{released.id}999")):
            with pytest.raises(StaleLease):
                slots.release(stale)
        assert client.frames_sent == sent
        slots.release(orphan)  # still held: the new incarnation takes it back (an orphan)
        slots.release(fresh)
        again = [pool.acquire(timeout=WAIT) for _ in range(3)]  # max_size=3: all came back
        for lease in again:
            pool.release(lease)
    finally:
        if client is not None:
            client.close()
        runtime.shutdown(timeout=5)


def test_a_lease_released_through_another_handle_goes_back_through_its_own(
    stalled: tuple[Client, StallingPool, Node],
) -> None:
    client, _, _ = stalled
    cached, uncached = client.pool("p"), client.pool("p", cache=False)
    lease = cached.acquire(timeout=WAIT)
    uncached.release(lease)  # accepted: the cached handle that lent it parks it
    assert cached.parked == 1  # type: ignore[attr-defined]
    with pytest.raises(DoubleRelease):
        cached.release(lease)
    assert client.ledger.held == 0


@pytest.mark.parametrize("cache", MODES, ids=MODE_IDS)
def test_a_thread_that_ended_holding_a_lease_left_it_expired(
    stalled: tuple[Client, StallingPool, Node], cache: bool
) -> None:
    """As in-process: the lease went back when its thread ended; a later release is late."""
    client, pool, _ = stalled
    slots = client.pool("p", cache=cache)
    thread, out = in_thread(lambda: slots.acquire(timeout=WAIT))
    thread.join(WAIT)
    (lease,) = out
    assert wait_until(lambda: client.ledger.held == 0)  # its thread is gone: so is its lease
    with pytest.raises(ExpiredLease):
        slots.release(lease)
    assert wait_until(lambda: pool.told == [Release(lease.id)])  # given back once, for the thread
