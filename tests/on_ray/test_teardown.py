"""A raylet killed outright, and everything stopped: each on a cluster of its own.

test_pools.py's cluster is stopped with its module: two at once do not fit 2 cores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import psutil

import lessor.ray
from lessor import PoolSpec, TokenFactory
from lessor.ray.root import ROOT
from lessor.transport.node import ENV_ADDRESS
from tests.on_ray import tasks
from tests.on_ray.conftest import on, ray, start_cluster, stop_cluster
from tests.support.helpers import wait_until


def test_a_frozen_node_s_tokens_stay_booked_while_ray_lists_it_alive_and_return_at_its_death() -> (
    None
):
    """SIGSTOP a raylet and every process under it (a partition, as the cluster sees it):
    until Ray declares the node dead its agent's tokens stay booked; then they return."""
    cluster, head, _ = start_cluster()
    other = cluster.add_node(num_cpus=2)  # the node this test freezes
    cluster.wait_for_nodes()
    frozen: list[psutil.Process] = []
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
        raylet = psutil.Process(
            next(p.pid for name, p in other.live_processes() if name == "raylet")
        )
        frozen = [raylet, *raylet.children(recursive=True)]
        for process in frozen:
            process.suspend()
        samples = []  # (Ray lists the node alive, tokens booked in the global pool)
        while True:
            alive = any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())
            samples.append((alive, on_leased(started)))
            if not alive:
                break
            time.sleep(0.05)  # (sampling, not synchronisation)
        assert samples[0] == (True, 2), samples
        assert all(leased == 2 for alive, leased in samples if alive), samples
        granted = ray.get(waiter, timeout=90)
        assert "granted" in granted, granted
        gone = ray.get(started.global_pool("n").info.remote())["gone"]
        assert [why for _, why in gone] in (["node died"], ["agent died"]), gone
    finally:
        for process in frozen:
            with contextlib.suppress(psutil.Error):
                process.resume()
        stop_cluster(cluster)


def on_leased(started: lessor.ray.RayLessor) -> int:
    return int(ray.get(started.global_pool("n").stats.remote(), timeout=30).leased)


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


def test_an_agent_restarted_too_often_is_given_up_on_and_the_other_node_goes_on() -> None:
    cluster, head, other = start_cluster()
    try:
        started = lessor.ray.start(
            [PoolSpec("r", TokenFactory(), max_size=1, max_total=2, scope="process")],
            max_restarts=1,
            max_seconds=120.0,
        )
        root = ray.get_actor(ROOT, namespace=lessor.ray.NAMESPACE)
        first = ray.get(started.agent(other).whoami.remote(), timeout=60)
        name = f"lessor-node-{other}"
        assert wait_until(lambda: _watched(root, name) == first, timeout=30)
        os.kill(first, signal.SIGKILL)  # one restart is allowed
        assert wait_until(lambda: _pid(started, other) not in (None, first), timeout=60)
        assert wait_until(lambda: ray.get(root.status.remote())["restarts"], timeout=30), ray.get(
            root.status.remote()
        )
        second = ray.get(started.agent(other).whoami.remote(), timeout=60)
        assert wait_until(lambda: _watched(root, name) == second, timeout=30)
        os.kill(second, signal.SIGKILL)
        assert wait_until(lambda: ray.get(root.status.remote())["given_up"], timeout=60), ray.get(
            root.status.remote()
        )
        status = ray.get(root.status.remote())
        assert list(status["given_up"]) == [f"lessor-node-{other}"], status
        refused = ray.get(on(other, tasks.wait_grant_or_error).remote("r"), timeout=60)
        assert "gave up" in refused, refused
        served = ray.get(on(head, tasks.wait_grant).remote("r", 30.0), timeout=60)
        assert "granted" in served, served
    finally:
        stop_cluster(cluster)


def _pid(started: lessor.ray.RayLessor, node: str) -> int | None:
    try:
        return int(ray.get(started.agent(node).whoami.remote(), timeout=5))
    except (ray.exceptions.RayError, ValueError):
        return None


def _watched(root: Any, name: str) -> int | None:
    """The pid of agent ``name`` that lessor-root watches now (None between two)."""
    watching: dict[str, int] = ray.get(root.status.remote(), timeout=30)["watching"]
    return watching.get(name)
