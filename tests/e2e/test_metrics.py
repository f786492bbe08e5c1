"""The Prometheus endpoint, scraped over HTTP as Prometheus does and read with
``prometheus_client``'s own parser: a real runtime with a pool, a breaker, a batcher,
the memory manager and two worker processes (tests/workers/metrics_targets.py), and
the server's life (off by default, one per runtime, gone after shutdown)."""

from __future__ import annotations

import importlib
import itertools
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import lessor
from lessor import BreakerSpec, LessorError, MemorySpec, PoolSpec, Runtime, TokenFactory
from lessor.errors import RuntimeStopped
from lessor.runtime.metrics import BOUNDS_LE, MetricsServer, StatusCollector
from lessor.specs import BatchSpec
from tests.support.helpers import wait_until
from tests.workers import metrics_targets

START_BOUND = 30.0  # seconds for a spawned worker to be up and holding its lease
BOUND = 10.0  # seconds for what the runtime does on its own (a reclaim, a restart)
CYCLES = 5  # leases taken and given back by the test's thread
HOLD = 0.003  # seconds each of those is held

#: Every family the endpoint exports, as exposed (counters with _total), and its type.
FAMILIES = {
    "lessor_info": "gauge", "lessor_up": "gauge", "lessor_uptime_seconds": "gauge",
    "lessor_status_unavailable": "gauge",
    "lessor_pool_resources": "gauge", "lessor_pool_max_resources": "gauge",
    "lessor_pool_waiting_requests": "gauge", "lessor_pool_leases": "gauge",
    "lessor_pool_acquired_total": "counter", "lessor_pool_released_total": "counter",
    "lessor_pool_acquire_timeouts_total": "counter", "lessor_pool_created_total": "counter",
    "lessor_pool_destroyed_total": "counter", "lessor_pool_broken_total": "counter",
    "lessor_pool_factory_errors_total": "counter", "lessor_pool_rejected_total": "counter",
    "lessor_pool_leases_reclaimed_total": "counter",
    "lessor_pool_acquire_wait_seconds": "histogram", "lessor_pool_hold_seconds": "histogram",
    "lessor_process_pool_resources": "gauge", "lessor_process_pool_waiting_requests": "gauge",
    "lessor_breaker_state": "gauge", "lessor_breaker_calls_total": "counter",
    "lessor_breaker_failures_total": "counter", "lessor_breaker_slow_calls_total": "counter",
    "lessor_breaker_rejected_total": "counter", "lessor_breaker_trips_total": "counter",
    "lessor_breaker_failure_rate_ratio": "gauge",
    "lessor_batcher_items_accepted_total": "counter",
    "lessor_batcher_items_completed_total": "counter",
    "lessor_batcher_items_failed_total": "counter", "lessor_batcher_retries_total": "counter",
    "lessor_batcher_batches_total": "counter", "lessor_batcher_pending_items": "gauge",
    "lessor_batcher_in_flight_batches": "gauge",
    "lessor_memory_machine_bytes": "gauge", "lessor_memory_process_rss_bytes": "gauge",
    "lessor_memory_process_limit_bytes": "gauge", "lessor_memory_process_paused": "gauge",
    "lessor_memory_actions_total": "counter",
    "lessor_child_restarts_total": "counter", "lessor_children": "gauge",
    "lessor_events_total": "counter",
    "lessor_worker_up": "gauge", "lessor_worker_uptime_seconds": "gauge",
    "lessor_worker_restarts_total": "counter", "lessor_worker_recycles_total": "counter",
    "lessor_node_connections_total": "counter", "lessor_node_refused_total": "counter",
    "lessor_node_bad_frames_total": "counter", "lessor_node_closed_oversized_total": "counter",
}  # fmt: skip


# -- reading a scrape ----------------------------------------------------------------------


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        text: str = answer.read().decode()
        return text


def scrape(port: int) -> list[Sample]:
    """Every sample of one scrape, as prometheus_client's parser reads them."""
    return [s for family in text_string_to_metric_families(fetch(port)) for s in family.samples]


def values(samples: list[Sample], name: str, **labels: str) -> list[float]:
    """The values of the samples named ``name`` whose labels include ``labels``."""
    return [s.value for s in samples
            if s.name == name and labels.items() <= s.labels.items()]  # fmt: skip


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample named ``name`` with ``labels`` (fails if none or several)."""
    found = values(samples, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def buckets(samples: list[Sample], name: str, pool: str) -> list[tuple[str, float]]:
    return [(s.labels["le"], s.value) for s in samples
            if s.name == f"{name}_bucket" and s.labels["pool"] == pool]  # fmt: skip


def metrics_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lessor-metrics")]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def new_runtime(**options: Any) -> Runtime:
    return Runtime(handle_signals=False, shutdown_timeout=5.0, **options)


def port_of(runtime: Runtime) -> int:
    """The port ``Runtime(metrics_port=0)`` bound."""
    port = runtime.metrics_port
    assert port is not None
    return port


# -- the whole runtime, scraped --------------------------------------------------------


class Scene:
    """A runtime serving metrics: pool "slots", breaker "api", batcher "rows", the memory
    manager, and two workers each holding one lease of "slots" until told to stop."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.runtime = new_runtime()
        self.port = self.runtime.serve_metrics(0)
        self.breaker = self.runtime.add_breaker(BreakerSpec("api"))
        self.pool = self.runtime.add_pool(PoolSpec("slots", TokenFactory(), max_size=4))
        self.batcher = self.runtime.add_batcher(
            BatchSpec("rows", metrics_targets.double, max_batch_size=3, max_wait=0.01)
        )
        self.runtime.add_memory(MemorySpec(interval=0.05, machine=None, uss_interval=None))
        self.group = self.runtime.spawn_workers(
            metrics_targets.hold, 2, ("slots", str(out_dir)), name="holders"
        )

    def holding(self, count: int) -> list[int]:
        """The pids of the workers that hold their lease now, once ``count`` do."""

        def pids() -> list[int]:
            return sorted(int(p.name.split(".")[0]) for p in self.out_dir.glob("*.held"))

        assert wait_until(lambda: len(pids()) >= count, START_BOUND, 0.02), pids()
        return pids()

    def close(self) -> None:
        (self.out_dir / "stop").touch()
        try:
            assert self.runtime.join(self.group, BOUND)
        finally:
            self.runtime.shutdown()


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    made = Scene(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_a_scrape_reports_pools_breakers_batchers_memory_tree_and_workers(scene: Scene) -> None:
    worker_pids = scene.holding(2)
    for _ in range(CYCLES):
        with scene.pool.lease(timeout=5):
            time.sleep(HOLD)
    kept = scene.pool.acquire(timeout=5)  # held while scraping
    assert [f.result(5) for f in scene.batcher.submit_many([1, 2, 3])] == [2, 4, 6]
    scene.breaker.force_open()
    try:
        s = scrape(scene.port)
    finally:
        scene.pool.release(kept)
    assert value(s, "lessor_up") == 1
    assert value(s, "lessor_info", version=lessor.__version__) == 1
    assert value(s, "lessor_uptime_seconds") > 0
    assert values(s, "lessor_status_unavailable") == []
    check_pool(s, worker_pids)
    check_histograms(s, acquired=2 + CYCLES + 1)
    check_breaker_and_batcher(s)
    check_memory_and_workers(s, worker_pids)
    check_tree(s)


def check_pool(s: list[Sample], worker_pids: list[int]) -> None:
    assert value(s, "lessor_pool_acquired_total", pool="slots") == 2 + CYCLES + 1
    assert value(s, "lessor_pool_released_total", pool="slots") == CYCLES
    assert value(s, "lessor_pool_created_total", pool="slots") == 3
    assert value(s, "lessor_pool_acquire_timeouts_total", pool="slots") == 0
    assert value(s, "lessor_pool_resources", pool="slots", state="leased") == 3
    assert value(s, "lessor_pool_resources", pool="slots", state="idle") == 0
    assert value(s, "lessor_pool_max_resources", pool="slots") == 4
    assert value(s, "lessor_pool_waiting_requests", pool="slots") == 0
    leases = {x.labels["holder"]: x.value for x in s if x.name == "lessor_pool_leases"}
    assert sorted(leases.values()) == [1, 1, 1], leases
    for pid in worker_pids:
        assert [h for h in leases if h.startswith("worker:") and h.endswith(f":{pid}")], leases
    assert [h for h in leases if h.startswith(f"thread:{os.getpid()}:")], leases


def check_histograms(s: list[Sample], acquired: int) -> None:
    """Cumulative buckets in seconds, +Inf equal to the count; one wait per grant."""
    wait = buckets(s, "lessor_pool_acquire_wait_seconds", "slots")
    assert [le for le, _ in wait] == BOUNDS_LE
    assert all(a <= b for (_, a), (_, b) in itertools.pairwise(wait)), wait
    assert wait[-1] == ("+Inf", acquired)
    assert value(s, "lessor_pool_acquire_wait_seconds_count", pool="slots") == acquired
    assert 0 <= value(s, "lessor_pool_acquire_wait_seconds_sum", pool="slots") < 5
    hold = buckets(s, "lessor_pool_hold_seconds", "slots")
    assert all(a <= b for (_, a), (_, b) in itertools.pairwise(hold)), hold
    assert hold[-1] == ("+Inf", CYCLES)
    assert dict(hold)["0.001"] == 0  # each was held 3 ms: seconds, not ms
    assert dict(hold)["5.0"] == CYCLES
    held = value(s, "lessor_pool_hold_seconds_sum", pool="slots")
    assert CYCLES * HOLD <= held < 5, held


def check_breaker_and_batcher(s: list[Sample]) -> None:
    states = {x.labels["lessor_breaker_state"]: x.value
              for x in s if x.name == "lessor_breaker_state"}  # fmt: skip
    assert states == {"closed": 0, "open": 0, "half_open": 0, "forced_open": 1, "disabled": 0}
    assert value(s, "lessor_breaker_calls_total", breaker="api") == 0
    assert values(s, "lessor_breaker_failure_rate_ratio") == []  # below minimum_calls
    assert value(s, "lessor_batcher_items_accepted_total", batcher="rows") == 3
    assert value(s, "lessor_batcher_items_completed_total", batcher="rows") == 3
    assert value(s, "lessor_batcher_items_failed_total", batcher="rows") == 0
    assert value(s, "lessor_batcher_batches_total", batcher="rows", reason="size") == 1
    assert value(s, "lessor_batcher_batches_total", batcher="rows", reason="shutdown") == 0
    assert value(s, "lessor_batcher_pending_items", batcher="rows") == 0
    assert value(s, "lessor_batcher_in_flight_batches", batcher="rows") == 0


def check_memory_and_workers(s: list[Sample], worker_pids: list[int]) -> None:
    rss = {x.labels["pid"]: x.value for x in s if x.name == "lessor_memory_process_rss_bytes"}
    assert {str(p) for p in worker_pids} | {str(os.getpid())} <= set(rss)
    assert all(v > 1_000_000 for v in rss.values()), rss  # bytes, not MB
    assert value(s, "lessor_memory_machine_bytes", kind="total") > 1_000_000
    assert value(s, "lessor_memory_process_paused", process="runtime") == 0
    assert value(s, "lessor_memory_actions_total", action="recycle") == 0
    workers = {x.labels["worker"]: x for x in s if x.name == "lessor_worker_up"}
    assert len(workers) == 2 and all(x.value == 1 for x in workers.values()), workers
    assert {x.labels["group"] for x in workers.values()} == {"root/holders"}
    pid_of = {x.labels["process"]: x.labels["pid"]
              for x in s if x.name == "lessor_memory_process_rss_bytes"}  # fmt: skip
    assert sorted(int(pid_of[w]) for w in workers) == worker_pids
    for worker in workers:
        assert 0 < value(s, "lessor_worker_uptime_seconds", worker=worker) < START_BOUND
    assert value(s, "lessor_worker_restarts_total", group="root/holders") == 0
    assert value(s, "lessor_worker_recycles_total", group="root/holders") == 0
    assert value(s, "lessor_node_connections_total") >= 2
    assert value(s, "lessor_node_bad_frames_total") == 0


def check_tree(s: list[Sample]) -> None:
    nodes = {("root", "supervisor"), ("root/slots", "pool"), ("root/breaker:api", "breaker"),
             ("root/batcher:rows", "batcher"), ("root/memory", "memory"),
             ("root/holders", "workers")}  # fmt: skip
    for path, kind in nodes:
        assert value(s, "lessor_child_restarts_total", path=path, kind=kind) == 0
    assert value(s, "lessor_children", kind="process", state="running") == 2
    assert value(s, "lessor_children", kind="pool", state="running") == 1
    assert values(s, "lessor_children", kind="supervisor") == []  # the root is not a child
    assert value(s, "lessor_events_total", kind="started") >= len(nodes) - 1


def test_a_worker_killed_holding_a_lease_shows_as_reclaimed_and_restarted(scene: Scene) -> None:
    victim = scene.holding(2)[0]
    os.kill(victim, signal.SIGKILL)
    reclaimed = "lessor_pool_leases_reclaimed_total"

    def seen() -> bool:
        found = values(scrape(scene.port), reclaimed, pool="slots", reason="holder died")
        return found == [1]

    assert wait_until(seen, BOUND, 0.05), scrape(scene.port)
    scene.holding(3)  # the restarted worker holds one again
    s = scrape(scene.port)
    assert value(s, "lessor_worker_restarts_total", group="root/holders") == 1
    assert str(victim) not in {x.labels["pid"] for x in s
                               if x.name == "lessor_memory_process_rss_bytes"}  # fmt: skip
    assert value(s, "lessor_events_total", kind="lease_reclaimed") >= 1
    assert value(s, reclaimed, pool="slots", reason="holder died") == 1


def test_a_process_scoped_pool_reports_each_process_and_its_global_cap(tmp_path: Path) -> None:
    rt = new_runtime()
    try:
        port = rt.serve_metrics(0)
        numbers = metrics_targets.Numbers()
        rt.add_pool(PoolSpec("conns", numbers, max_size=2, scope="process", max_total=3))
        group = rt.spawn_workers(metrics_targets.hold, 2, ("conns", str(tmp_path)), name="users")
        metric = "lessor_process_pool_resources"

        def both_hold() -> bool:
            leased = values(scrape(port), metric, pool="conns", state="leased")
            return sorted(leased) == [1, 1]

        assert wait_until(both_hold, START_BOUND, 0.05), scrape(port)
        s = scrape(port)
        processes = {x.labels["process"] for x in s if x.name == metric}
        assert {p.rpartition(".")[0] for p in processes} == {"root/users.0", "root/users.1"}
        assert values(s, metric, pool="conns", state="idle") == [0, 0]
        assert values(s, "lessor_process_pool_waiting_requests", pool="conns") == [0, 0]
        assert value(s, "lessor_pool_max_resources", pool="conns") == 3  # max_total, not max_size
        assert value(s, "lessor_pool_resources", pool="conns", state="leased") == 2  # the quota's
        (tmp_path / "stop").touch()
        assert rt.join(group, BOUND)
    finally:
        (tmp_path / "stop").touch()
        rt.shutdown()


# -- conventions ---------------------------------------------------------------------------


def test_every_family_is_exported_and_named_by_prometheus_conventions() -> None:
    """Counters end in _total, histograms in _seconds, no gauge looks like a counter;
    base units (seconds, bytes), lowercase label names; and nothing is missing."""
    rt = new_runtime()
    try:
        port = rt.serve_metrics(0)
        rt.add_pool(PoolSpec("slots", TokenFactory(), max_size=2))
        rt.add_breaker(BreakerSpec("api"))
        rt.add_batcher(BatchSpec("rows", metrics_targets.double))
        rt.add_memory(MemorySpec(interval=0.05, machine=None, uss_interval=None))
        text = fetch(port)
    finally:
        rt.shutdown()
    exposed = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    assert exposed == FAMILIES
    for name, kind in exposed.items():
        assert name.startswith("lessor_")
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        assert not re.search(r"_(ms|milliseconds|mb|kb|bytes_total)(_|$)", name), name
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["lessor_pool_acquired"].type == "counter"  # (the parser drops _total)
    assert parsed["lessor_pool_acquire_wait_seconds"].type == "histogram"
    for family in parsed.values():
        for sample in family.samples:
            assert all(k == k.lower() for k in sample.labels), sample


def test_the_docs_list_every_metric() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    listed = set(re.findall(r"^\| `(lessor_\w+)` \|", docs, re.MULTILINE))
    assert listed == set(FAMILIES)


# -- the server's life ---------------------------------------------------------------------


def test_metrics_are_off_by_default() -> None:
    rt = new_runtime()
    try:
        assert metrics_threads() == []
        assert rt.metrics_port is None
    finally:
        rt.shutdown()


def test_metrics_port_serves_until_shutdown_and_leaves_no_thread() -> None:
    rt = new_runtime(metrics_port=0)
    try:
        port = port_of(rt)
        assert port > 0
        assert value(scrape(port), "lessor_up") == 1
        only_server = [f"lessor-metrics:{port}"]  # (a scrape's thread ends just after it)
        assert wait_until(lambda: [t.name for t in metrics_threads()] == only_server, BOUND)
    finally:
        rt.shutdown()
    assert metrics_threads() == []
    assert refused(port)


def test_a_second_serve_metrics_raises_and_the_first_keeps_serving() -> None:
    rt = new_runtime()
    try:
        port = rt.serve_metrics(0)
        with pytest.raises(LessorError, match=str(port)):
            rt.serve_metrics(0)
        assert value(scrape(port), "lessor_up") == 1
    finally:
        rt.shutdown()
    with pytest.raises(RuntimeStopped):
        rt.serve_metrics(0)
    assert metrics_threads() == []


def test_a_port_in_use_fails_at_once() -> None:
    rt = new_runtime()
    try:
        port = rt.serve_metrics(0)
        other = new_runtime()
        try:
            with pytest.raises(OSError):
                other.serve_metrics(port)
        finally:
            other.shutdown()
    finally:
        rt.shutdown()


def test_each_scrape_takes_one_status_snapshot() -> None:
    rt = new_runtime()
    calls: list[float] = []

    def status() -> Any:
        calls.append(time.monotonic())
        return rt.status()

    server = MetricsServer(status, 0, "127.0.0.1")
    try:
        rt.add_pool(PoolSpec("slots", TokenFactory(), max_size=1))
        for n in (1, 2):
            assert value(scrape(server.port), "lessor_pool_max_resources", pool="slots") == 1
            assert len(calls) == n
    finally:
        server.close()
        rt.shutdown()


def test_a_scrape_without_status_says_down_rather_than_failing() -> None:
    """During shutdown status() raises: the scrape is ``lessor_up 0`` and HTTP 200."""

    def status() -> Any:
        raise RuntimeStopped("the runtime was shut down")

    server = MetricsServer(status, 0, "127.0.0.1")
    try:
        s = scrape(server.port)
        assert [(x.name, x.value) for x in s] == [("lessor_up", 0)]
    finally:
        server.close()
    assert [m.name for m in StatusCollector(status).collect()] == ["lessor_up"]


def test_close_is_idempotent_and_waits_for_a_scrape_under_way() -> None:
    release, asked = threading.Event(), threading.Event()

    def status() -> Any:
        asked.set()
        release.wait(10)
        raise RuntimeStopped("stopping")

    server = MetricsServer(status, 0, "127.0.0.1")
    got: list[str] = []
    scraper = threading.Thread(target=lambda: got.append(fetch(server.port)))
    scraper.start()
    assert asked.wait(10)
    closer = threading.Thread(target=server.close)
    closer.start()
    time.sleep(0.2)
    assert closer.is_alive()  # the scrape under way is finished, not cut
    release.set()
    closer.join(10)
    scraper.join(10)
    assert "lessor_up 0.0" in got[0]
    server.close()
    assert metrics_threads() == []
    assert refused(server.port)


def test_without_prometheus_client_serve_metrics_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "lessor.runtime.metrics")
    with pytest.raises(LessorError, match=re.escape("pip install 'lessor[metrics]'")):
        importlib.import_module("lessor.runtime.metrics")
    rt = new_runtime()
    try:
        with pytest.raises(LessorError, match=re.escape("lessor[metrics]")):
            rt.serve_metrics(0)
    finally:
        rt.shutdown()
    assert metrics_threads() == []
