"""Pool names resolve at once, in-process and in workers; wait() and try-acquire from
real worker processes.

``runtime.pool("slotz")`` and, in a worker, ``client.pool("slotz")`` raise NoSuchPool
when called, not at the first acquire: the worker asks its runtime (``Describe``,
once per name), so a pool added after the worker spawned is found, and a name not
found is asked again next time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lessor import (
    NoSuchPool,
    PoolHandle,
    PoolSpec,
    ProtocolError,
    Runtime,
    TokenFactory,
    start_pool,
)
from lessor.transport.node import ENV_ADDRESS, ENV_AUTHKEY, Node
from lessor.worker.client import Client
from tests.support.helpers import wait_until
from tests.workers import pool_targets

# -- a worker's client over a real node socket, in this process --------------------


class NotAPool:
    """A target that is no pool (as a map job): it refuses what it does not take."""

    def deliver(self, message: Any, reply: Any, holder: Any) -> None:
        from lessor.actors.reply import answer_error

        answer_error(reply, ProtocolError(f"a map job does not take {type(message).__name__}"))

    def cancel(self, reply: Any, holder: Any) -> None: ...


@pytest.fixture
def node() -> Iterator[Node]:
    made = Node()
    yield made
    made.close()


@pytest.fixture
def client(node: Node) -> Iterator[Client]:
    env = node.env("w")
    made = Client(env[ENV_ADDRESS], bytes.fromhex(env[ENV_AUTHKEY]), "w")
    made.on_lost = lambda: None  # this is the test process: never SIGTERM it
    yield made
    made.close()


@pytest.fixture
def slots() -> Iterator[PoolHandle]:
    handle = start_pool(PoolSpec("slots", TokenFactory(), max_size=1))
    yield handle
    handle.stop(timeout=5)


def test_an_unknown_name_fails_at_pool_not_at_acquire(node: Node, client: Client) -> None:
    for cache in (True, False):
        sent = client.frames_sent
        with pytest.raises(NoSuchPool, match="'slotz'"):
            client.pool("slotz", cache=cache)
        assert client.frames_sent == sent + 1  # one Describe, and no Acquire


def test_a_target_that_is_no_pool_is_no_pool(node: Node, client: Client) -> None:
    node.register("map-1", NotAPool())
    with pytest.raises(NoSuchPool, match="no pool named 'map-1'"):
        client.pool("map-1")


def test_a_pool_registered_later_is_found(node: Node, client: Client, slots: PoolHandle) -> None:
    with pytest.raises(NoSuchPool):
        client.pool("slots")
    node.register("slots", slots)  # added after this worker connected
    handle = client.pool("slots")
    with handle.lease(timeout=5) as token:
        assert token == 0
    sent = client.frames_sent
    assert client.pool("slots") is handle and client.frames_sent == sent  # known now


def test_the_runtimes_own_lookup_raises_at_once() -> None:
    with Runtime(handle_signals=False) as rt, pytest.raises(NoSuchPool, match="'slotz'"):
        rt.pool("slotz")


# -- real worker processes ---------------------------------------------------------


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(handle_signals=False)
    yield rt
    rt.shutdown(timeout=10)


def read(path: Path, timeout: float = 30) -> str:
    assert wait_until(path.exists, timeout=timeout), f"{path.name} never written"
    return path.read_text()


def test_a_worker_finds_a_pool_added_after_it_spawned(runtime: Runtime, tmp_path: Path) -> None:
    runtime.add_pool(PoolSpec("early", TokenFactory(), max_size=1))
    group = runtime.spawn_workers(pool_targets.names, 1, args=("late", str(tmp_path)),
                                  restart="transient")  # fmt: skip
    before = read(tmp_path / "before").splitlines()
    assert (
        before == ["NoSuchPool: no pool or job named 'late' in this runtime (frames sent: 1)"] * 2
    )  # cached and uncached alike, each from its one Describe
    runtime.add_pool(PoolSpec("late", TokenFactory(["t"]), max_size=1))
    (tmp_path / "go").write_text("")
    assert read(tmp_path / "after") == "granted t"
    assert runtime.join(group, timeout=30)


def test_wait_in_a_worker_waits_on_its_own_process_scoped_pool(
    runtime: Runtime, tmp_path: Path
) -> None:
    runtime.add_pool(PoolSpec("mine", pool_targets.Counting(), min_size=2, max_size=3,
                              scope="process", max_total=4))  # fmt: skip
    group = runtime.spawn_workers(pool_targets.wait_for, 1, args=("mine", 10.0, str(tmp_path)),
                                  restart="transient")  # fmt: skip
    assert read(tmp_path / "outcome") == "ready, size 2"
    assert runtime.join(group, timeout=30)


def test_wait_in_a_worker_reports_its_dead_factory_with_the_cause(
    runtime: Runtime, tmp_path: Path
) -> None:
    runtime.add_pool(PoolSpec("down", pool_targets.Unreachable(), min_size=1, max_size=1,
                              scope="process", create_backoff=0.02,
                              create_backoff_max=0.1))  # fmt: skip
    group = runtime.spawn_workers(pool_targets.wait_for, 1, args=("down", 0.5, str(tmp_path)),
                                  restart="transient")  # fmt: skip
    outcome = read(tmp_path / "outcome")
    assert outcome.startswith("AcquireTimeout (cause ConnectionRefusedError): pool 'down' holds 0")
    assert "nobody listens on the test's port" in outcome
    assert runtime.join(group, timeout=30)


def test_a_workers_try_on_a_busy_pool_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    busy = runtime.add_pool(PoolSpec("busy", TokenFactory(), max_size=1))
    with busy.lease(timeout=5):
        group = runtime.spawn_workers(pool_targets.try_acquire, 1, args=("busy", str(tmp_path)),
                                      restart="transient")  # fmt: skip
        outcome = read(tmp_path / "outcome")
        assert runtime.join(group, timeout=30)
    assert outcome.startswith("PoolExhausted: pool 'busy' has nothing free now (timeout=0)")
