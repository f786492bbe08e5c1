"""Benchmark: lessor on a two-raylet Ray cluster, against the semaphore actor Ray users write.

Run by hand from the repository root, with Ray installed (``pip install -e '.[ray]'``):
``python tests/bench/bench_ray.py [--json] [--pairs N] [--repeat K]``. Every figure
comes from the same run, on a ``ray.cluster_utils.Cluster`` of two raylets.

* ``pair_us_task``: an acquire+release pair through ``lessor.connect().pool(name)``
  inside one Ray task: the node agent's socket, with the worker's lease cache.
* ``pair_us_ray_actor_semaphore``: the same pair against a detached async actor with
  an ``asyncio.Semaphore`` (what ray-project/ray#8017 and linagora/openrag build),
  from inside one Ray task. Target: ``ratio_semaphore_over_task >= 20``.
* ``reclaim_ms_task_kill``: a task holding the only token is SIGKILLed; from the kill
  to the grant of a task waiting on the other node (CLOCK_MONOTONIC is one clock for
  every process of this machine). Median of ``--repeat`` kills. Target: ``<= 50``.
* ``reclaim_ms_agent_kill``: the node agent holding both tokens of a pool is SIGKILLed;
  from the kill to the grant on the other node. Ray reports the agent's death (a
  pending call fails) about a second later: that is most of this figure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from typing import Any

from common import cli  # run as a script: this folder is on sys.path

import lessor
import lessor.ray
from lessor import PoolSpec, TokenFactory

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tests.on_ray import tasks
from tests.on_ray.conftest import start_cluster, stop_cluster


class Semaphore:
    """The hand-built cluster semaphore: a detached async actor. No reclaim when a
    holder dies, and a restart at full capacity forgets who holds what."""

    def __init__(self, n: int) -> None:
        self.sem = asyncio.Semaphore(n)

    async def acquire(self) -> None:
        await self.sem.acquire()

    async def release(self) -> None:
        self.sem.release()


def lessor_pairs(pool: str, n: int) -> float:
    handle = lessor.connect().pool(pool)
    handle.release(handle.acquire())  # warm: connected, one lease parked
    start = time.perf_counter()
    for _ in range(n):
        handle.release(handle.acquire())
    return (time.perf_counter() - start) / n * 1e6


def semaphore_pairs(semaphore: Any, n: int) -> float:
    ray.get(semaphore.acquire.remote())
    ray.get(semaphore.release.remote())
    start = time.perf_counter()
    for _ in range(n):
        ray.get(semaphore.acquire.remote())
        ray.get(semaphore.release.remote())
    return (time.perf_counter() - start) / n * 1e6


def on(node: str, fn: Any, **options: Any) -> Any:
    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    return ray.remote(fn).options(scheduling_strategy=strategy, num_cpus=0.5, **options)


def reclaim_ms(pool: str, holders: int, kill: str, a: str, b: str, started: Any) -> float:
    """Holders on node ``a`` take every token; a waiter on ``b`` queues; ``kill`` (a
    holder task, or ``agent``) is SIGKILLed: ms from the kill to the waiter's grant."""
    flags = ray.remote(tasks.Flags).options(num_cpus=0).remote()
    refs = [on(a, tasks.hold_until, max_retries=0).remote(pool, flags, f"h{i}")
            for i in range(holders)]  # fmt: skip
    held = [ray.get(flags.wait.remote(f"h{i}.held"), timeout=60) for i in range(holders)]
    waiter = on(b, tasks.wait_grant).remote(pool, 60.0)
    time.sleep(0.5)  # (lets the waiter queue: a figure, not a synchronisation)
    pid = held[0]["pid"] if kill == "task" else ray.get(started.agent(a).whoami.remote())
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    granted = ray.get(waiter, timeout=120)
    for ref in refs:
        ray.cancel(ref, force=True)
    ray.kill(flags)
    if "granted" not in granted:
        raise RuntimeError(f"the waiter was not served: {granted}")
    return (granted["granted"] - killed) * 1000


def run(pairs: int, repeat: int) -> dict[str, Any]:
    t0 = time.monotonic()
    cluster, head, other = start_cluster()
    up = time.monotonic() - t0
    try:
        t1 = time.monotonic()
        started = lessor.ray.start([
            PoolSpec("slots", TokenFactory(), max_size=4, max_total=4, scope="process"),
            PoolSpec("one", TokenFactory(), max_size=1, max_total=1, scope="process"),
            PoolSpec("two", TokenFactory(), max_size=2, max_total=2, scope="process"),
        ])  # fmt: skip
        start_s = time.monotonic() - t1
        pair_task = ray.get(on(other, lessor_pairs).remote("slots", pairs), timeout=300)
        semaphore = ray.remote(Semaphore).options(num_cpus=0, name="bench-semaphore",
                                                  lifetime="detached").remote(4)  # fmt: skip
        pair_sem = ray.get(
            on(other, semaphore_pairs).remote(semaphore, max(50, pairs // 40)), timeout=300
        )
        ray.kill(semaphore)
        task_kills = [reclaim_ms("one", 1, "task", head, other, started) for _ in range(repeat)]
        agent_kills = []
        for _ in range(max(1, repeat // 2)):
            old = ray.get(started.agent(head).whoami.remote())
            agent_kills.append(reclaim_ms("two", 2, "agent", head, other, started))
            while ray.get(started.agent(head).whoami.remote(), timeout=60) == old:
                time.sleep(0.1)
    finally:
        stop_cluster(cluster)
    return {
        "ray": ray.__version__,
        "ray_init_s": round(up, 2),
        "start_s": round(start_s, 2),
        "pairs": pairs,
        "pair_us_task": round(pair_task, 2),
        "pair_us_ray_actor_semaphore": round(pair_sem, 1),
        "ratio_semaphore_over_task": round(pair_sem / pair_task, 1),
        "reclaim_ms_task_kill": round(statistics.median(task_kills), 2),
        "reclaim_ms_task_kill_samples": [round(x, 2) for x in task_kills],
        "reclaim_ms_agent_kill": round(statistics.median(agent_kills), 1),
        "reclaim_ms_agent_kill_samples": [round(x, 1) for x in agent_kills],
        "target_ratio_met": pair_sem / pair_task >= 20,
        "target_task_kill_met": statistics.median(task_kills) <= 50,
    }


if __name__ == "__main__":
    cli(__doc__, run, pairs=20_000, repeat=5)
