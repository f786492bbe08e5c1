"""A raylet killed outright, and everything stopped: each on a cluster of its own.

test_pools.py's cluster is stopped with its module: two at once do not fit 2 cores.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import lessor.ray
from lessor import PoolSpec, TokenFactory
from lessor.transport.node import ENV_ADDRESS
from tests.on_ray import tasks
from tests.on_ray.conftest import ray, start_cluster, stop_cluster
from tests.support.helpers import wait_until


def on(node: str, fn: Any, **options: Any) -> Any:
    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    return ray.remote(fn).options(scheduling_strategy=strategy, num_cpus=0.5, **options)


def test_a_killed_raylet_s_tokens_come_back_at_node_death_not_while_it_is_only_unreachable() -> (
    None
):
    cluster, head, _ = start_cluster()
    other = cluster.add_node(num_cpus=2)  # the raylet this test kills
    cluster.wait_for_nodes()
    try:
        started = lessor.ray.start(
            [PoolSpec("n", TokenFactory(), max_size=2, max_total=2, scope="process")]
        )
        node = other.node_id
        flags = ray.remote(tasks.Flags).options(num_cpus=0).remote()
        for i in range(2):
            on(node, tasks.hold_until, max_retries=0).remote("n", flags, f"n{i}")
        for i in range(2):
            ray.get(flags.wait.remote(f"n{i}.held"), timeout=60)
        waiter = on(head, tasks.wait_grant).remote("n", 60.0)
        killed = time.monotonic()
        cluster.remove_node(other, allow_graceful=False)
        granted = ray.get(waiter, timeout=90)
        assert "granted" in granted, granted
        declared = [n for n in ray.nodes() if n["NodeID"] == node]
        assert declared and not declared[0]["Alive"]  # Ray had declared it dead
        gone = ray.get(started.global_pool("n").info.remote())["gone"]
        assert [why for _, why in gone] in (["node died"], ["agent died"]), gone
        assert granted["granted"] > killed
    finally:
        stop_cluster(cluster)


def test_after_stop_and_ray_shutdown_no_process_is_left() -> None:
    cluster, head, other = start_cluster()
    stopped = False
    try:
        lessor.ray.start([PoolSpec("s", TokenFactory(), max_size=1)])
        pids = {
            ray.get(on(n, tasks.wait_grant).remote("s", 30.0), timeout=60)["pid"]
            for n in (head, other)
        }
        found = lessor.ray.find()
        assert found is not None and len(found.agents()) == 2
        sockets = [ray.get(a.env.remote(os.getpid()))[ENV_ADDRESS] for a in found.agents()]
        stop_cluster(cluster)
        stopped = True
        me = psutil.Process()
        assert wait_until(lambda: not me.children(recursive=True), timeout=30), [
            p.cmdline()[:2] for p in me.children(recursive=True)
        ]
        assert not [pid for pid in pids if psutil.pid_exists(pid)]
        assert not ray.is_initialized()
        assert not [path for path in sockets if os.path.exists(os.path.dirname(path))]
    finally:
        if not stopped:
            stop_cluster(cluster)
