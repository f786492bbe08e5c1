"""A Ray cluster of two raylets on this machine, with lessor started on it.

Skipped where Ray is not installed (``pip install '.[ray]'``); ``.ci/run`` runs these
in a step of their own (``-m ray``). Ray's own processes (raylets, GCS, idle task
workers) live as long as the cluster, so a test here must leave no *lessor* thread
and no process that is not Ray's; ``test_shutdown.py`` checks that nothing at all is
left once lessor and the cluster stop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

import lessor.ray  # noqa: E402
from lessor import BreakerSpec, PoolSpec, TokenFactory  # noqa: E402
from tests.support.helpers import wait_until  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Node death declared after ~1.5 s of failed health checks (Ray's default is ~14 s).
HEALTH = {"health_check_period_ms": 300, "health_check_failure_threshold": 5,
          "health_check_timeout_ms": 300, "health_check_initial_delay_ms": 0}  # fmt: skip

#: The pools every test here may use: (name, max_size per node, max_total).
POOLS = {"slots": (2, 3), "one": (1, 1), "two": (2, 2), "epoch": (2, 2), "loose": (4, 8)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "on_ray" in item.nodeid:
            item.add_marker(pytest.mark.ray)


@dataclass
class RayCluster:
    cluster: Any
    lessor: lessor.ray.RayLessor
    head: str  # node ids
    other: str

    def agent_pid(self, node: str) -> int:
        return int(ray.get(self.lessor.agent(node).whoami.remote(), timeout=60))

    def stats(self, pool: str) -> Any:
        return ray.get(self.lessor.global_pool(pool).stats.remote(), timeout=30)

    def info(self, pool: str) -> dict[str, Any]:
        info: dict[str, Any] = ray.get(self.lessor.global_pool(pool).info.remote(), timeout=30)
        return info


def on(node: str, fn: Any, **options: Any) -> Any:
    """``fn`` as a Ray task pinned to ``node``; half a CPU, so 4 run at once per node."""
    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    return ray.remote(fn).options(scheduling_strategy=strategy, num_cpus=0.5, **options)


def start_cluster(**system: Any) -> tuple[Any, str, str]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "_system_config": {**HEALTH, **system}},
    )
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": REPO}},
             log_to_driver=False)  # fmt: skip
    cluster.wait_for_nodes()
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    head = ray.get_runtime_context().get_node_id()
    return cluster, head, next(n for n in nodes if n != head)


def stop_cluster(cluster: Any) -> None:
    lessor.ray.stop(timeout=5)
    ray.shutdown()
    cluster.shutdown()


#: The cluster's breaker: opens after 4 calls of which half failed, for 1 s; one probe.
API = BreakerSpec("api", window_size=4, minimum_calls=4, open_duration=1.0, half_open_calls=1)


def specs() -> list[PoolSpec]:
    return [
        PoolSpec(name, TokenFactory(), max_size=size, max_total=total, scope="process")
        for name, (size, total) in POOLS.items()
    ]


@pytest.fixture(scope="module")
def on_ray() -> Iterator[RayCluster]:
    cluster, head, other = start_cluster()
    try:
        yield RayCluster(cluster, lessor.ray.start(specs(), [API]), head, other)
    finally:
        stop_cluster(cluster)


def _not_rays(process: psutil.Process) -> bool:
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        line = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # (an empty command line is a process on its way out: Ray's, or it would be named)
    return line != "" and "ray" not in line and "multiprocessing.resource_tracker" not in line


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Overrides the suite's: Ray's processes and threads outlive a test here."""
    yield
    me = psutil.Process()

    def leftovers() -> tuple[list[str], list[int]]:
        threads = [t.name for t in threading.enumerate() if t.name.startswith("lessor")]
        return threads, [p.pid for p in me.children(recursive=True) if _not_rays(p)]

    wait_until(lambda: leftovers() == ([], []), timeout=20)
    left = leftovers()
    assert left == ([], []), f"test left lessor threads or processes: {left}"
