"""Process-scoped pools: the runtime's own process gets real connections, the global
cap holds across it and its workers, the quota is shared fairly, and every process's
own pool shows in the runtime's stats.

The connections are files (tests/workers/quota_targets.py, ``FileConns``): counting
the files counts the connections open in all processes, as pg_stat_activity does for
the PostgreSQL test at the end.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lessor import AcquireTimeout, NoSuchPool, PoolSpec, Runtime, TokenFactory
from lessor.adapters.postgres import PostgresFactory
from lessor.runtime.process_pools import ProcessPoolStats
from tests.support import pg
from tests.support.helpers import wait_until
from tests.workers import quota_targets
from tests.workers.quota_targets import FileConn, FileConns, open_now

START_BOUND = 30.0  # seconds for a spawned worker to be up (spawn imports everything)


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = Runtime(handle_signals=False)
    try:
        yield runtime
    finally:
        runtime.shutdown(timeout=2)


@pytest.fixture
def conns(tmp_path: Path) -> Path:
    folder = tmp_path / "conns"
    folder.mkdir()
    return folder


class Sampler:
    """Counts open connections every 2 ms in a thread, until stopped: the highest seen."""

    def __init__(self, folder: Path) -> None:
        self.most = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(str(folder),))
        self._thread.start()

    def _run(self, folder: str) -> None:
        while not self._done.wait(0.002):
            self.most = max(self.most, open_now(folder))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.most


def read(path: Path, timeout: float = START_BOUND) -> str:
    assert wait_until(path.exists, timeout=timeout), f"{path.name} never came"
    return path.read_text()


# -- the runtime's own process -------------------------------------------------------------


def test_the_runtime_leases_real_connections_under_the_quota(rt: Runtime, conns: Path) -> None:
    db = rt.add_pool(PoolSpec("db", FileConns(str(conns)), max_size=2, scope="process",
                              max_total=3))  # fmt: skip
    assert rt.pool("db") is db
    assert db.stats().size == 0 and open_now(str(conns)) == 0  # started on first use only
    with db.lease(timeout=5) as conn:
        assert isinstance(conn, FileConn) and conn.execute("SELECT 1") == "SELECT 1"
        assert rt.quota("db").stats().leased == 1 == open_now(str(conns))
    stats = rt.process_pool_stats("db")
    assert isinstance(stats, ProcessPoolStats)
    assert stats.quota.leased == 1  # the connection stays open (idle), holding its token
    assert stats.per_process["runtime"].size == 1 and stats.per_process["runtime"].idle == 1
    assert stats.as_dict()["per_process"]["runtime"]["acquired"] == 1
    with pytest.raises(NoSuchPool):
        rt.quota("nope")
    rt.add_pool(PoolSpec("plain", TokenFactory(), max_size=1))
    with pytest.raises(NoSuchPool):
        rt.process_pool_stats("plain")


def test_the_runtimes_cached_handle_lends_real_connections(rt: Runtime, conns: Path) -> None:
    rt.add_pool(PoolSpec("db", FileConns(str(conns)), max_size=2, scope="process", max_total=2))
    cached = rt.pool("db", cache=True)
    assert rt.pool("db", cache=True) is cached
    seen = set()
    for _ in range(20):
        with cached.lease(timeout=5) as conn:
            conn.execute("SELECT 1")
            seen.add(conn.path)
    assert len(seen) == 1 and open_now(str(conns)) == 1  # parked and reused, one connection
    assert rt.quota("db").stats().leased == 1


def test_shutdown_closes_the_runtimes_connections_and_gives_their_tokens_back(
    conns: Path,
) -> None:
    rt = Runtime(handle_signals=False)
    db = rt.add_pool(PoolSpec("db", FileConns(str(conns)), max_size=3, scope="process",
                              max_total=3, min_size=1))  # fmt: skip
    quota = rt.quota("db")
    mine = db.acquire(timeout=5)  # the caller's: taken back at once
    holding, shutting = threading.Event(), threading.Event()

    def another_holder() -> None:  # gives its connection back during the drain
        lease = db.acquire(timeout=5)
        holding.set()
        shutting.wait(5)
        time.sleep(random.uniform(0.05, 0.2))  # finishing its work
        db.release(lease)

    returner = threading.Thread(target=another_holder)
    returner.start()
    assert holding.wait(5)
    assert open_now(str(conns)) == 2 and quota.stats().leased == 2
    shutting.set()
    report = rt.shutdown(timeout=5)
    returner.join()
    assert [lease.id for lease in report.reclaimed_from_caller] == [mine.id]
    assert report.reclaimed == () and report.killed == ()  # no token had to be reclaimed
    assert open_now(str(conns)) == 0  # every connection closed, min_size's too
    assert report.duration_s < 3  # drained as soon as the last one came back


def test_at_the_deadline_the_runtimes_own_lease_is_reclaimed_not_its_tokens(conns: Path) -> None:
    rt = Runtime(handle_signals=False)
    db = rt.add_pool(PoolSpec("db", FileConns(str(conns)), max_size=2, scope="process",
                              max_total=2))  # fmt: skip
    holding, done = threading.Event(), threading.Event()

    def stuck() -> None:  # a thread still inside its block at the deadline
        db.acquire(timeout=5)
        holding.set()
        done.wait(10)

    thread = threading.Thread(target=stuck)
    thread.start()
    assert holding.wait(5)
    try:
        report = rt.shutdown(timeout=0.3)
    finally:
        done.set()
        thread.join()
    assert [lease.pool for lease in report.reclaimed] == ["db"]
    assert report.reclaimed[0].holder.startswith("thread:")  # the own pool's lease, no token
    assert open_now(str(conns)) == 0


def test_the_runtimes_own_pool_follows_the_memory_managers_pause_of_everyone(
    rt: Runtime, conns: Path
) -> None:
    from lessor import MemorySpec

    rt.add_memory(MemorySpec(interval=0.05, machine=None, uss_interval=None))
    db = rt.add_pool(PoolSpec("db", FileConns(str(conns)), max_size=1, scope="process",
                              max_total=1))  # fmt: skip
    db.release(db.acquire(timeout=5))
    memory = rt._memory
    assert memory is not None
    memory.admission("", "", True, "the machine is short of memory")  # as the actor would
    with pytest.raises(AcquireTimeout, match="paused by the memory manager"):
        db.acquire(timeout=0.2)
    memory.admission("", "", False, "")
    db.release(db.acquire(timeout=5))


# -- the runtime and its workers ------------------------------------------------------------


def test_the_cap_holds_across_the_runtime_and_its_workers(
    rt: Runtime, conns: Path, tmp_path: Path
) -> None:
    db = rt.add_pool(PoolSpec("db", FileConns(str(conns)), max_size=3, scope="process",
                              max_total=4))  # fmt: skip
    sampler = Sampler(conns)
    stop = tmp_path / "stop"
    group = rt.spawn_workers(quota_targets.hammer_until, 2,
                             args=("db", 4, str(tmp_path), str(stop)))  # fmt: skip
    try:
        assert wait_until(lambda: len(rt.process_pool_stats("db").per_process) == 2, START_BOUND)
        for _ in range(50):  # the runtime borrows too, in the middle of it
            with db.lease(timeout=10) as conn:
                conn.execute("SELECT 1")
                time.sleep(random.uniform(0.0005, 0.002))
        stop.touch()
        assert rt.join(group, timeout=30)
    finally:
        most = sampler.stop()
    assert most <= 4, f"{most} connections were open at once"
    assert most >= 3  # the cap was contended for
    assert sum(int(p.read_text()) for p in tmp_path.glob("hammer-*")) > 0


def test_each_workers_own_pool_shows_in_the_runtimes_stats(
    rt: Runtime, conns: Path, tmp_path: Path
) -> None:
    db = rt.add_pool(PoolSpec("db", FileConns(str(conns)), max_size=2, scope="process",
                              max_total=5))  # fmt: skip
    go = tmp_path / "go"
    group = rt.spawn_workers(quota_targets.hold_until, 2, args=("db", 2, str(tmp_path), str(go)))
    held = db.acquire(timeout=5)

    def everyone_reported() -> bool:
        per = rt.process_pool_stats("db").per_process
        workers = {k: s for k, s in per.items() if k != "runtime"}
        return len(workers) == 2 and all(s.leased == 2 == s.size for s in workers.values())

    assert wait_until(everyone_reported, START_BOUND)
    stats = rt.process_pool_stats("db")
    assert all(key.startswith(group.path + ".") for key in stats.per_process if key != "runtime")
    assert stats.per_process["runtime"].leased == 1
    assert stats.quota.leased == 5 == sum(s.size for s in stats.per_process.values())
    db.release(held)
    go.touch()
    assert rt.join(group, timeout=30)
    # A worker that has exited is not listed; its connections closed, its tokens back.
    assert wait_until(lambda: set(rt.process_pool_stats("db").per_process) == {"runtime"})
    assert rt.quota("db").stats().leased == 1 == open_now(str(conns))


# -- fair shares ----------------------------------------------------------------------------


@pytest.mark.parametrize("fair_share", [True, False])
def test_a_busy_worker_gives_a_connection_to_one_that_waits_with_none(
    conns: Path, tmp_path: Path, fair_share: bool
) -> None:
    """A worker whose 8 threads keep both its connections busy never has one idle, so
    recall alone never moves a token; fair shares do, within a release or two. Its own
    pool (max_size 4) also has 2 creates waiting for tokens meanwhile: the connection it
    sheds must close even so (they must not hold every factory slot)."""
    rt = Runtime(handle_signals=False)
    try:
        rt.add_pool(PoolSpec("db", FileConns(str(conns)), max_size=4, scope="process",
                             max_total=2), fair_share=fair_share)  # fmt: skip
        stop = tmp_path / "stop"
        sampler = Sampler(conns)
        hog = rt.spawn_workers(quota_targets.hammer_until, 1,
                               args=("db", 8, str(tmp_path), str(stop), 30.0))  # fmt: skip
        assert wait_until(lambda: rt.quota("db").stats().leased == 2, START_BOUND)
        timeout = 10.0 if fair_share else 2.0  # (unfair, it waits in vain: keep it short)
        late = rt.spawn_workers(quota_targets.late_lease, 1,
                                args=("db", str(tmp_path), str(stop), timeout))  # fmt: skip
        outcome = read(tmp_path / "late").split()
        assert rt.join(late, timeout=30) and rt.join(hog, timeout=30)
        assert sampler.stop() <= 2
    finally:
        rt.shutdown(timeout=2)
    if fair_share:
        assert outcome[0] == "ok", outcome
        assert float(outcome[1]) < 5.0  # against the hog's 30 s of hammering
    else:
        assert outcome[0] == "AcquireTimeout", outcome
    assert int((next(tmp_path.glob("hammer-*"))).read_text()) > 0


def test_the_runtime_above_its_share_sheds_a_connection_for_a_worker(
    rt: Runtime, conns: Path, tmp_path: Path
) -> None:
    """Max 3 between the runtime and one worker. Three threads of the runtime keep its 2
    connections busy (a released one goes straight to the next thread, never idle); the
    worker has 1 and wants a second. Told to shed, the runtime closes one on a release
    and the worker gets its token."""
    db = rt.add_pool(PoolSpec("db", FileConns(str(conns)), max_size=2, scope="process",
                              max_total=3, max_idle=60))  # fmt: skip
    stop = threading.Event()

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            with db.lease(timeout=10) as conn:
                conn.execute("SELECT 1")
                time.sleep(rng.uniform(0.0002, 0.001))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: rt.quota("db").stats().leased == 2)
        group = rt.spawn_workers(quota_targets.lease_twice, 1, args=("db", str(tmp_path)))
        read(tmp_path / "first")
        waited = float(read(tmp_path / "second", timeout=10))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert waited < 5.0
    assert rt.join(group, timeout=30)
    assert rt.process_pool_stats("db").per_process["runtime"].destroyed >= 1  # a Shed


# -- PostgreSQL -----------------------------------------------------------------------------


def test_the_runtime_and_workers_share_postgresql_connections(
    server: pg.Postgres, tmp_path: Path
) -> None:
    app = "lessor-own"
    rt = Runtime(handle_signals=False)
    try:
        db = rt.add_pool(PoolSpec("pg", PostgresFactory(server.dsn, application_name=app),
                                  max_size=2, scope="process", max_total=3))  # fmt: skip
        go = tmp_path / "go"
        group = rt.spawn_workers(
            quota_targets.hold_until, 1, args=("pg", 2, str(tmp_path), str(go))
        )
        assert wait_until(lambda: rt.quota("pg").stats().leased == 2, START_BOUND)
        with db.lease(timeout=10) as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
            assert server.sessions(app) == 3
        go.touch()
        assert rt.join(group, timeout=30)
        assert server.sessions(app) == 1  # the runtime's, idle; the worker's closed
    finally:
        rt.shutdown(timeout=5)
    assert server.sessions(app) == 0
