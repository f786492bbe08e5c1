"""The Prometheus endpoint: ``Runtime.serve_metrics()`` / ``Runtime(metrics_port=...)``.

Nothing here counts anything: every scrape takes ONE :class:`RuntimeStatus` snapshot
and turns it into metric families (a custom collector), so the endpoint costs nothing
between scrapes and can never disagree with ``lessor status``. The families are built
with ``prometheus_client`` (never hand-written exposition text) in a registry of the
server's own, not the global ``REGISTRY``: several runtimes may share a process.
Names follow Prometheus conventions (base units, ``_total`` counters, ``_seconds``
histograms); docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from lessor.core.breaker import STATES as BREAKER_STATES
from lessor.core.samples import BOUNDS_MS
from lessor.errors import LessorError
from lessor.runtime.status import RuntimeStatus, walk

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
        Metric,
        StateSetMetricFamily,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # raised where serve_metrics imports this module
    raise LessorError(
        "the Prometheus endpoint needs prometheus_client: pip install 'lessor[metrics]'"
    ) from exc

__all__ = ["MetricsServer", "StatusCollector"]

log = logging.getLogger("lessor.metrics")

#: How often the idle server looks whether ``close()`` was called (seconds): the most
#: ``close()`` waits for the listening loop.
POLL_INTERVAL = 0.05
#: A scrape's connection may stay silent this long before it is dropped (seconds), so
#: a stalled client can hold neither a thread nor ``close()`` for ever.
CONNECTION_TIMEOUT = 10.0
#: Histogram bucket bounds, in seconds as Prometheus wants (BOUNDS_MS is in ms).
BOUNDS_LE = [repr(ms / 1000) for ms in BOUNDS_MS] + ["+Inf"]

_POOL_STATES = ("idle", "leased", "checking", "creating")
_POOL_COUNTERS = (  # (PoolStats field, metric, help)
    ("acquired", "lessor_pool_acquired_total", "Leases granted."),
    ("released", "lessor_pool_released_total", "Leases given back by their holders."),
    ("timeouts", "lessor_pool_acquire_timeouts_total", "Acquires that timed out."),
    ("created", "lessor_pool_created_total", "Resources the factory made."),
    ("destroyed", "lessor_pool_destroyed_total", "Resources destroyed."),
    ("broken", "lessor_pool_broken_total", "Resources released as broken."),
    ("factory_errors", "lessor_pool_factory_errors_total", "Factory create() calls that raised."),
    ("rejected", "lessor_pool_rejected_total", "Acquires refused at once (queue full, closed)."),
)  # fmt: skip
_BREAKER_COUNTERS = (
    ("calls", "lessor_breaker_calls_total", "Calls let through and recorded."),
    ("failures", "lessor_breaker_failures_total", "Recorded calls that failed."),
    ("slow_calls", "lessor_breaker_slow_calls_total", "Calls of slow_call_duration or more."),
    ("rejected", "lessor_breaker_rejected_total", "Calls refused (BreakerOpen)."),
    ("trips", "lessor_breaker_trips_total", "Times the breaker opened."),
)  # fmt: skip
_BATCHER_COUNTERS = (
    ("accepted", "lessor_batcher_items_accepted_total", "Items accepted."),
    ("completed", "lessor_batcher_items_completed_total", "Items that got a result."),
    ("failed", "lessor_batcher_items_failed_total", "Items that failed."),
    ("retries", "lessor_batcher_retries_total", "Batch runs retried after the processor raised."),
)  # fmt: skip
_FLUSH_REASONS = ("size", "time", "manual", "shutdown")
_MEMORY_ACTIONS = (("warning", "warnings"), ("cleanup", "cleanups"), ("pause", "pauses"),
                   ("resume", "resumes"), ("recycle", "recycles"), ("leak", "leaks"))  # fmt: skip
_NODE_COUNTERS = ("connections", "refused", "bad_frames", "closed_oversized")


class StatusCollector(Collector):
    """Turns one ``status()`` per scrape into metric families.

    A snapshot that fails (the runtime shutting down or stopped) is a scrape of
    ``lessor_up 0`` alone, not an HTTP 500: the process still answers, its runtime not.
    """

    def __init__(self, status: Callable[[], RuntimeStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._status()
        except Exception as exc:  # any failure is "down": logged
            level = logging.DEBUG if isinstance(exc, LessorError) else logging.WARNING
            log.log(level, "metrics scrape: no status: %r", exc)
            yield GaugeMetricFamily("lessor_up", "1 if the runtime answered this scrape.", 0)
            return
        yield from families(status)


def families(status: RuntimeStatus) -> Iterator[Metric]:
    """Every metric family of one snapshot (see docs/metrics.md)."""
    yield InfoMetricFamily("lessor", "The lessor version.", {"version": status.version})
    yield GaugeMetricFamily("lessor_up", "1 if the runtime answered this scrape.", 1)
    yield GaugeMetricFamily("lessor_uptime_seconds", "Seconds since the runtime started.",
                            status.uptime_s)  # fmt: skip
    missing = _gauge("lessor_status_unavailable", "1 per part of the snapshot that did "
                     "not answer in time (its metrics are missing).", "part")  # fmt: skip
    for name in status.unavailable:
        missing.add_metric([name], 1)
    yield missing
    yield from _pools(status.pools)
    yield from _breakers(status.breakers)
    yield from _batchers(status.batchers)
    if status.memory is not None:
        yield from _memory(status.memory)
    yield from _tree(status)
    yield from _workers(status)


def _gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _histogram(name: str, doc: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=["pool"])


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (BOUNDS_MS, +Inf last) as Prometheus's cumulative ``le`` buckets."""
    out: list[tuple[str, float]] = []
    total = 0
    for le, count in zip(BOUNDS_LE, counts, strict=True):
        total += count
        out.append((le, total))
    return out


def _pools(pools: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    resources = _gauge("lessor_pool_resources", "Resources now, by state.", "pool", "state")
    limit = _gauge("lessor_pool_max_resources", "Most resources the pool may hold "
                   "(a process-scoped pool: max_total, across processes).", "pool")  # fmt: skip
    waiting = _gauge("lessor_pool_waiting_requests", "Acquires waiting now.", "pool")
    leases = _gauge("lessor_pool_leases", "Leases held now, by holder.", "pool", "holder")
    counters = [(field, _counter(name, doc, "pool")) for field, name, doc in _POOL_COUNTERS]
    reclaimed = _counter("lessor_pool_leases_reclaimed_total", "Leases taken back from "
                         "their holders, by why.", "pool", "reason")  # fmt: skip
    wait = _histogram("lessor_pool_acquire_wait_seconds", "Time from Acquire to grant.")
    hold = _histogram("lessor_pool_hold_seconds", "Time from grant to release.")
    per_process = _gauge("lessor_process_pool_resources", "A process-scoped pool's resources "
                         "in one process, by state.", "pool", "process", "state")  # fmt: skip
    per_waiting = _gauge("lessor_process_pool_waiting_requests", "Acquires waiting in one "
                         "process's own pool.", "pool", "process")  # fmt: skip
    for name, pool in sorted(pools.items()):
        stats = pool["stats"]
        for state in _POOL_STATES:
            resources.add_metric([name, state], stats[state])
        most = pool["max_total"] if pool["scope"] == "process" else pool["max_size"]
        if most is not None:
            limit.add_metric([name], most)
        waiting.add_metric([name], stats["waiting"])
        for holder, count in sorted(stats["holders"].items()):
            leases.add_metric([name, holder], count)
        for field, family in counters:
            family.add_metric([name], stats[field])
        for why, count in sorted(stats["reclaimed_by"].items()):
            reclaimed.add_metric([name, why], count)
        wait.add_metric([name], _cumulative(stats["wait_ms_buckets"]), stats["wait_ms_sum"] / 1000)
        hold.add_metric([name], _cumulative(stats["hold_ms_buckets"]), stats["hold_ms_sum"] / 1000)
        for process, local in sorted(pool.get("per_process", {}).items()):
            for state in ("idle", "leased", "creating"):
                per_process.add_metric([name, process, state], local[state])
            per_waiting.add_metric([name, process], local["waiting"])
    yield from (resources, limit, waiting, leases)
    yield from (family for _, family in counters)
    yield from (reclaimed, wait, hold, per_process, per_waiting)


def _breakers(breakers: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    state = StateSetMetricFamily("lessor_breaker_state", "The breaker's state now.",
                                 labels=["breaker"])  # fmt: skip
    counters = [(field, _counter(name, doc, "breaker")) for field, name, doc in _BREAKER_COUNTERS]
    rate = _gauge("lessor_breaker_failure_rate_ratio", "Failed share of the window's calls, "
                  "0-1 (absent below minimum_calls).", "breaker")  # fmt: skip
    for name, stats in sorted(breakers.items()):
        state.add_metric([name], {s: s == stats["state"] for s in BREAKER_STATES})
        for field, family in counters:
            family.add_metric([name], stats[field])
        if stats["failure_rate"] >= 0:  # -1: too few calls in the window to judge
            rate.add_metric([name], stats["failure_rate"] / 100)
    yield state
    yield from (family for _, family in counters)
    yield rate


def _batchers(batchers: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    counters = [(field, _counter(name, doc, "batcher")) for field, name, doc in _BATCHER_COUNTERS]
    batches = _counter("lessor_batcher_batches_total", "Batches run, by what flushed them.",
                       "batcher", "reason")  # fmt: skip
    pending = _gauge("lessor_batcher_pending_items", "Accepted items not yet in a batch.",
                     "batcher")  # fmt: skip
    in_flight = _gauge("lessor_batcher_in_flight_batches", "Batches running now.", "batcher")
    for name, stats in sorted(batchers.items()):
        for field, family in counters:
            family.add_metric([name], stats[field])
        for reason in _FLUSH_REASONS:
            batches.add_metric([name, reason], stats[f"flushed_by_{reason}"])
        pending.add_metric([name], stats["pending"])
        in_flight.add_metric([name], stats["in_flight"])
    yield from (family for _, family in counters)
    yield from (batches, pending, in_flight)


def _memory(memory: dict[str, Any]) -> Iterator[Metric]:
    machine = _gauge("lessor_memory_machine_bytes", "The machine's memory (limit: what "
                     "the memory manager's fractions are of).", "kind")  # fmt: skip
    for kind in ("total", "available", "used", "limit"):
        if memory["machine"].get(kind) is not None:
            machine.add_metric([kind], memory["machine"][kind])
    rss = _gauge("lessor_memory_process_rss_bytes", "Resident memory of the runtime and "
                 "each worker.", "process", "pid")  # fmt: skip
    limit = _gauge("lessor_memory_process_limit_bytes", "A process's memory limit.", "process")
    paused = _gauge("lessor_memory_process_paused", "1 while a process's admission to "
                    "pools is paused for memory.", "process")  # fmt: skip
    for process in memory["processes"]:
        key = process["key"]
        rss.add_metric([key, str(process["pid"])], process["rss"])
        if process["limit"] is not None:
            limit.add_metric([key], process["limit"])
        paused.add_metric([key], 1 if process["paused"] else 0)
    actions = _counter("lessor_memory_actions_total", "What the memory manager did.", "action")
    for action, field in _MEMORY_ACTIONS:
        actions.add_metric([action], memory[field])
    yield from (machine, rss, limit, paused, actions)


def _tree(status: RuntimeStatus) -> Iterator[Metric]:
    restarts = _counter("lessor_child_restarts_total", "Restarts of each node of the "
                        "supervision tree.", "path", "kind")  # fmt: skip
    children = _gauge("lessor_children", "Nodes of the tree below the root, by kind and "
                      "state.", "kind", "state")  # fmt: skip
    counts: dict[tuple[str, str], int] = {}
    for node in walk(status.tree):
        kind = str(node.get("kind", ""))
        restarts.add_metric([str(node.get("path", "")), kind], node.get("restarts", 0))
        if node is not status.tree:
            key = (kind, str(node.get("state", "")))
            counts[key] = counts.get(key, 0) + 1
    for (kind, state), count in sorted(counts.items()):
        children.add_metric([kind, state], count)
    events = _counter("lessor_events_total", "Events the tree emitted, by kind.", "kind")
    for kind, count in sorted(status.events.items()):
        events.add_metric([kind], count)
    yield from (restarts, children, events)


def _workers(status: RuntimeStatus) -> Iterator[Metric]:
    up = _gauge("lessor_worker_up", "1 while the worker process runs.", "worker", "group")
    uptime = _gauge("lessor_worker_uptime_seconds", "Seconds the worker process has run.",
                    "worker")  # fmt: skip
    restarts: dict[str, int] = {}
    recycles: dict[str, int] = {}
    for worker in status.workers:
        group = worker["group"]
        up.add_metric([worker["id"], group], 1 if worker["running"] else 0)
        uptime.add_metric([worker["id"]], worker["uptime_s"])
        restarts[group] = restarts.get(group, 0) + worker["restarts"]
        recycles[group] = recycles.get(group, 0) + worker["recycles"]
    restarted = _counter("lessor_worker_restarts_total", "Worker restarts, summed over a "
                         "group's slots.", "group")  # fmt: skip
    recycled = _counter("lessor_worker_recycles_total", "Workers replaced for memory, "
                        "summed over a group's slots.", "group")  # fmt: skip
    for group in sorted(restarts):
        restarted.add_metric([group], restarts[group])
        recycled.add_metric([group], recycles[group])
    yield from (up, uptime, restarted, recycled)
    node = status.node or {}
    for field in _NODE_COUNTERS:
        yield CounterMetricFamily(f"lessor_node_{field}_total", _NODE_HELP[field],
                                  node.get(field, 0))  # fmt: skip


_NODE_HELP = {
    "connections": "Worker connections the runtime's socket accepted.",
    "refused": "Worker connections refused (bad key or handshake).",
    "bad_frames": "Frames from workers that could not be decoded.",
    "closed_oversized": "Worker connections closed for a frame over the size limit.",
}


class _Handler(WSGIRequestHandler):
    """A scrape: silent (no access log on stderr), and timed out if the client stalls."""

    timeout = CONNECTION_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: every 15 s from every Prometheus would drown the log."""


class _Server(WSGIServer):
    """A WSGI server answering each scrape on a thread of its own, all joined on close
    (``ThreadingMixIn``'s threads are daemons that nothing joins: they would outlive it)."""

    def __init__(self, addr: str, port: int) -> None:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family  # (read by the base's __init__, for "::1" and the like)
        self._scrapes: set[threading.Thread] = set()
        self._guard = threading.Lock()
        super().__init__((str(sockaddr[0]), int(sockaddr[1])), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._answer, args=(request, client_address),
                                  name=f"lessor-metrics:{self.server_port}-scrape")  # fmt: skip
        with self._guard:
            self._scrapes.add(thread)
        thread.start()

    def _answer(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # a client gone mid-answer
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._guard:
                self._scrapes.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics scrape from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        with self._guard:
            scrapes = list(self._scrapes)
        for thread in scrapes:
            thread.join()


class MetricsServer:
    """Serves ``http://addr:port/metrics`` from a thread of its own, from construction
    until :meth:`close`.

    ``status`` is called once per scrape; ``port`` 0 picks a free one (``.port`` is the
    port bound); ``addr`` is the address to listen on (a name or an IPv4/IPv6 address).
    An address in use raises OSError here, not later.
    """

    def __init__(self, status: Callable[[], RuntimeStatus], port: int, addr: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)  # never the global REGISTRY
        self.registry.register(StatusCollector(status))
        self._server = _Server(addr, port)
        self._server.set_app(make_wsgi_app(self.registry))
        self.port: int = self._server.server_port
        self.addr = addr
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_INTERVAL,),
            name=f"lessor-metrics:{self.port}", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        """Stop listening, finish the scrapes under way and join every thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()  # returns once serve_forever has
        self._server.server_close()  # closes the socket, joins the scrapes
        self._thread.join()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"MetricsServer({self.addr}:{self.port}, {state})"
