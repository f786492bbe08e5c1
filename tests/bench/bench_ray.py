"""Benchmark: lessor on a two-raylet Ray cluster, against the semaphore actor Ray users write.

Run by hand from the repository root, with Ray installed (``pip install -e '.[ray]'``):
``python tests/bench/bench_ray.py [--json] [--pairs N] [--repeats K]``. Every figure
comes from the same run, on a ``ray.cluster_utils.Cluster`` of two raylets on this
machine (the head and node B, ``num_cpus=2`` each; Ray's default settings) and
``lessor.ray.start`` of three pools: ``slots`` (4 per node, 4 in the cluster), ``one``
(1 token) and ``two`` (2 tokens). Tasks are pinned to a node with
``NodeAffinitySchedulingStrategy``. About a minute on 2 cores.

* ``pair_us_task``: mean µs of an ``acquire()`` + ``release(lease)`` pair through
  ``lessor.connect().pool("slots")`` inside one Ray task on node B, ``--pairs`` of
  them, after a warm-up outside the timed loop (the connect, then ``--warm`` pairs).
  The worker's handle caches the released lease in the task's process, so a pair is
  a few µs and no round trip; the node agent recalls the lease when someone waits.
* ``pair_us_ray_actor_semaphore``, the anchor: the same pair against what Ray users
  build today, a named, detached async actor around an ``asyncio.Semaphore``
  (``ray.get(sem.acquire.remote())``, then ``release``), looked up by name and timed
  the same way from one task on node B, ``--semaphore-pairs`` pairs (two actor calls
  each, 1-3 ms). It never gets back what a dead holder held.
  Target: ``ratio_semaphore_over_task >= 20``.
* ``reclaim_ms_task_kill``: a task on the head node holds pool ``one``'s only token,
  tells a small signal actor its pid and sleeps; a task on node B waits for the token
  in ``acquire``. Once the global pool shows B's agent waiting (and a random 0-100 ms
  later, see below), the driver reads ``time.monotonic()`` and SIGKILLs the holder;
  the waiter reads ``time.monotonic()`` when granted (CLOCK_MONOTONIC is one clock for
  every process of this machine). The figure is grant minus kill, in ms: the head's
  agent sees the holder's socket close and reclaims the lease, gives the token back
  to the global pool, which grants it to B's agent. Median of ``--repeats`` kills,
  samples listed. Target: ``<= 50``. The random delay puts the kill at a random
  point of the global pool's recall cycle: while B waits, it asks the head's agent
  for idle tokens every 50 ms (``RECALL_INTERVAL``), and the reclaimed token waits
  for the next ask, so a kill right after the waiter queues always costs the most.
* ``reclaim_ms_task_kill_same_node``: the same with the waiter on the head node, so
  the token never leaves the agent: lessor's own share of the figure above.
* ``reclaim_ms_agent_kill``: two tasks on the head node hold both tokens of pool
  ``two`` and sleep, a task on node B waits; the driver SIGKILLs the head's node
  agent (its pid from ``whoami``) and times kill to grant as above. The global pool
  learns of it from a pending call that fails ``ActorUnavailableError`` (restarting,
  or unreachable: not yet proof of death), then asks the agent its pid until the
  agent Ray restarted answers with a new one: about a second, most of it Ray's
  restart of the agent. Median of ``--agent-repeats`` kills; before the next, the
  agent has answered with a new pid and the holders (a task process holding leases
  exits when its agent is lost) are gone. ``start`` is given ``max_restarts`` above
  the number of kills, so ``lessor-root`` never gives up on the agent.

Also: ``ray_init_s`` (the cluster up and the driver connected), ``start_s``
(``lessor.ray.start``), ``stop_s`` (``lessor.ray.stop()``: each agent drains, and
waits up to its 10 s timeout for a lease parked in a task process's cache) and
``shutdown_s`` (``ray.shutdown()`` and ``cluster.shutdown()``), Ray's version, and
``leftover_processes``: processes of this run still alive some seconds after the
shutdown (children of this driver, or Ray processes that outlived their parent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import lessor
import lessor.ray
from lessor import PoolSpec, TokenFactory

SEMAPHORE = "bench-semaphore"
SEMAPHORE_NAMESPACE = "bench"
#: A holder is killed at a random time in [0, PHASE) s after the waiter queued: where
#: the kill lands in the global pool's recall cycle (RECALL_INTERVAL, 50 ms) matters.
PHASE = 0.1
#: Seconds any one step may take before the run fails (a figure is never a timeout).
DEADLINE = 60.0


# -- in Ray tasks and actors ---------------------------------------------------------


class Semaphore:
    """The hand-built cluster semaphore: a detached async actor. A holder that dies
    keeps its permit for ever, and a restart forgets who holds what."""

    def __init__(self, permits: int) -> None:
        self.sem = asyncio.Semaphore(permits)

    async def acquire(self) -> None:
        await self.sem.acquire()

    async def release(self) -> None:
        self.sem.release()


class Signals:
    """Where the driver and the tasks meet: named values, each awaited with a deadline."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.changed = asyncio.Condition()

    async def set(self, name: str, value: Any) -> None:
        async with self.changed:
            self.values[name] = value
            self.changed.notify_all()

    async def wait(self, name: str, timeout: float) -> Any:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: name in self.values), timeout)
            return self.values[name]


def lessor_pairs(pool: str, n: int, warm: int) -> dict[str, Any]:
    """In a task: connect, ``warm`` pairs, then ``n`` timed pairs (µs per pair)."""
    handle = lessor.connect().pool(pool)
    acquire, release = handle.acquire, handle.release
    for _ in range(warm):
        release(acquire())
    began = time.perf_counter()
    for _ in range(n):
        release(acquire())
    us = (time.perf_counter() - began) / n * 1e6
    return {"us": us, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}


def semaphore_pairs(n: int, warm: int) -> dict[str, Any]:
    """In a task: find the semaphore actor by name, ``warm`` pairs, then ``n`` timed."""
    sem = ray.get_actor(SEMAPHORE, namespace=SEMAPHORE_NAMESPACE)
    for _ in range(warm):
        ray.get(sem.acquire.remote())
        ray.get(sem.release.remote())
    began = time.perf_counter()
    for _ in range(n):
        ray.get(sem.acquire.remote())
        ray.get(sem.release.remote())
    us = (time.perf_counter() - began) / n * 1e6
    return {"us": us, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}


def hold(pool: str, signals: Any, name: str) -> None:
    """In a task: take a token of ``pool``, tell ``signals`` this process's pid, sleep."""
    handle = lessor.connect().pool(pool)
    handle.acquire(timeout=DEADLINE)
    ray.get(signals.set.remote(name, os.getpid()))
    time.sleep(300)  # until killed (or until its agent is lost: then it exits)


def wait_grant(pool: str, timeout: float) -> dict[str, Any]:
    """In a task: acquire, waiting up to ``timeout`` s; when it was granted."""
    handle = lessor.connect().pool(pool)
    lease = handle.acquire(timeout=timeout)
    granted = time.monotonic()
    handle.release(lease)
    return {"granted": granted, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}


# -- in the driver -------------------------------------------------------------------


def on(node: str, fn: Any, **options: Any) -> Any:
    """``fn`` as a Ray task pinned to ``node`` (a quarter CPU: the holders may sleep)."""
    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    return ray.remote(fn).options(scheduling_strategy=strategy, num_cpus=0.25, **options)


def wait_for(what: str, ok: Any, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench_ray: gave up waiting for {what}")
        time.sleep(0.002)


def waiting(started: lessor.ray.RayLessor, pool: str, node: str | None) -> int:
    """Waiters for ``pool``: agents in its global pool (``node`` None), or tasks in
    ``node``'s agent."""
    if node is None:
        stats = started.global_pool(pool).stats.remote()
    else:
        stats = started.agent(node).stats.remote(pool)
    return int(ray.get(stats, timeout=DEADLINE).waiting)


def kill_and_time(
    started: lessor.ray.RayLessor,
    pool: str,
    holders: int,
    victim: str,
    a: str,
    b: str,
    phase: float,
) -> float:
    """Holders on node ``a`` take every token of ``pool``, a waiter on ``b`` queues;
    ``phase`` s later ``victim`` ("task": the first holder; "agent": ``a``'s agent)
    is SIGKILLed. Milliseconds from the kill to the waiter's grant."""
    signals = ray.remote(Signals).options(num_cpus=0).remote()
    refs = [on(a, hold, max_retries=0).remote(pool, signals, f"h{i}") for i in range(holders)]
    pids = [ray.get(signals.wait.remote(f"h{i}", DEADLINE), timeout=DEADLINE + 5)
            for i in range(holders)]  # fmt: skip
    waiter = on(b, wait_grant, max_retries=0).remote(pool, DEADLINE)
    where = None if a != b else a  # (a waiter on the holders' node queues in their agent)
    wait_for("the waiter to queue", lambda: waiting(started, pool, where) >= 1)
    time.sleep(phase)
    pid = pids[0] if victim == "task" else agent_pid(started, a)
    if pid is None:
        raise RuntimeError(f"bench_ray: no pid to kill ({victim})")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    granted = ray.get(waiter, timeout=DEADLINE)["granted"]
    for ref in refs:
        ray.cancel(ref, force=True)  # (the holders still alive, if any)
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(ref, timeout=DEADLINE)  # (their deaths, seen: not logged as unhandled)
    wait_for("the holders to exit", lambda: not any(psutil.pid_exists(p) for p in pids))
    ray.kill(signals)
    return (granted - killed) * 1000


def task_kills(
    started: lessor.ray.RayLessor, repeats: int, a: str, b: str, seed: int
) -> list[float]:
    """``repeats`` holder kills, each at a random phase of the global pool's recall."""
    phases = random.Random(seed)
    return [
        kill_and_time(started, "one", 1, "task", a, b, phases.uniform(0, PHASE))
        for _ in range(repeats)
    ]


def agent_pid(started: lessor.ray.RayLessor, node: str) -> int | None:
    """Node ``node``'s agent's pid; None while it does not answer (restarting)."""
    try:
        return int(ray.get(started.agent(node).whoami.remote(), timeout=1.0))
    except (ray.exceptions.RayError, ValueError):
        return None  # restarting


def agent_kills(started: lessor.ray.RayLessor, repeats: int, a: str, b: str) -> list[float]:
    """``repeats`` kills of ``a``'s agent, each once Ray restarted the one before."""
    samples = []
    for _ in range(repeats):
        old = agent_pid(started, a)
        samples.append(kill_and_time(started, "two", 2, "agent", a, b, 0.0))
        wait_for("the agent's restart", lambda old=old: agent_pid(started, a) not in (None, old))
    return samples


def pair_figures(other: str, args: argparse.Namespace) -> dict[str, float]:
    """µs per pair: lessor from a task, then the semaphore actor from a task."""
    mine = ray.get(on(other, lessor_pairs).remote("slots", args.pairs, args.warm), timeout=300)
    sem = (
        ray.remote(Semaphore)
        .options(name=SEMAPHORE, namespace=SEMAPHORE_NAMESPACE, lifetime="detached", num_cpus=0)
        .remote(4)
    )
    try:
        theirs = ray.get(
            on(other, semaphore_pairs).remote(args.semaphore_pairs, min(args.warm, 20)),
            timeout=300,
        )
    finally:
        ray.kill(sem)
    return {"pair_us_task": mine["us"], "pair_us_ray_actor_semaphore": theirs["us"]}


def cluster_up() -> tuple[Cluster, str, str]:
    """Two raylets on this machine; the driver connected. (the head's node id, B's)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    cluster.wait_for_nodes()
    head = ray.get_runtime_context().get_node_id()
    other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)
    return cluster, head, other


def described(p: psutil.Process) -> str | None:
    """``pid command`` of a process still running; None if it is gone (or a zombie)."""
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"{p.pid} {' '.join(p.cmdline())[:80]}"
    except psutil.Error:
        return None


def leftovers(since: float, wait: float = 15.0) -> list[str]:
    """Processes this run started that are still alive after up to ``wait`` s."""
    me = psutil.Process()
    deadline = time.monotonic() + wait
    while True:
        left = {p.pid: p for p in me.children(recursive=True)}
        for p in psutil.process_iter(["create_time", "cmdline", "ppid"]):
            cmd = " ".join(p.info["cmdline"] or ())
            if p.info["create_time"] >= since and p.info["ppid"] == 1 and "ray" in cmd:
                left[p.pid] = p  # a Ray process that outlived its parent
        alive = [d for d in map(described, left.values()) if d is not None]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    since = time.time() - 1.0
    t0 = time.monotonic()
    cluster, head, other = cluster_up()
    ray_init_s = time.monotonic() - t0
    try:
        t1 = time.monotonic()
        started = lessor.ray.start(
            [
                PoolSpec("slots", TokenFactory(), max_size=4, max_total=4, scope="process"),
                PoolSpec("one", TokenFactory(), max_size=1, max_total=1, scope="process"),
                PoolSpec("two", TokenFactory(), max_size=2, max_total=2, scope="process"),
            ],
            max_restarts=args.agent_repeats + 3,
        )
        start_s = time.monotonic() - t1
        out: dict[str, Any] = pair_figures(other, args)
        task = task_kills(started, args.repeats, head, other, seed=1)
        local = task_kills(started, args.repeats, head, head, seed=2)
        agent = agent_kills(started, args.agent_repeats, head, other)
        t2 = time.monotonic()
        lessor.ray.stop()
        stop_s = time.monotonic() - t2
    finally:
        t3 = time.monotonic()
        ray.shutdown()
        cluster.shutdown()
        shutdown_s = time.monotonic() - t3
    ratio = out["pair_us_ray_actor_semaphore"] / out["pair_us_task"]
    return {
        "ray": ray.__version__,
        "cpus": os.cpu_count(),
        "ray_init_s": round(ray_init_s, 2),
        "start_s": round(start_s, 2),
        "pairs": args.pairs,
        "pair_us_task": round(out["pair_us_task"], 2),
        "semaphore_pairs": args.semaphore_pairs,
        "pair_us_ray_actor_semaphore": round(out["pair_us_ray_actor_semaphore"], 1),
        "ratio_semaphore_over_task": round(ratio, 1),
        "reclaim_ms_task_kill": round(statistics.median(task), 2),
        "reclaim_ms_task_kill_samples": [round(x, 2) for x in task],
        "reclaim_ms_task_kill_same_node": round(statistics.median(local), 2),
        "reclaim_ms_task_kill_same_node_samples": [round(x, 2) for x in local],
        "reclaim_ms_agent_kill": round(statistics.median(agent), 1),
        "reclaim_ms_agent_kill_samples": [round(x, 1) for x in agent],
        "stop_s": round(stop_s, 2),
        "shutdown_s": round(shutdown_s, 2),
        "targets": {"ratio_semaphore_over_task": ">= 20", "reclaim_ms_task_kill": "<= 50"},
        "targets_met": {
            "ratio_semaphore_over_task": ratio >= 20,
            "reclaim_ms_task_kill": statistics.median(task) <= 50,
        },
        "leftover_processes": leftovers(since),
    }


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Ray prints its workers' deaths to stdout: sent to stderr, so stdout has the figures."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table(result: dict[str, Any]) -> None:
    """The figures, then each one against its anchor or target."""
    for key, value in result.items():
        if key not in ("targets", "targets_met"):
            print(f"{key:>38}: {value}")
    ok = result["targets_met"]
    sem, pair = result["pair_us_ray_actor_semaphore"], result["pair_us_task"]
    task, local = result["reclaim_ms_task_kill"], result["reclaim_ms_task_kill_same_node"]
    agent = result["reclaim_ms_agent_kill"]
    print()
    print(f"{'pair: semaphore actor / lessor':>38}: {sem / pair:.0f}x "
          f"(target >= 20: {met(ok['ratio_semaphore_over_task'])})")  # fmt: skip
    print(f"{'task kill, other node':>38}: {task:.1f} ms "
          f"(target <= 50 ms: {met(ok['reclaim_ms_task_kill'])})")  # fmt: skip
    print(f"{'task kill: other node / same node':>38}: {task / local:.1f}x "
          "(the token's trip through the global pool)")  # fmt: skip
    print(f"{'agent kill / task kill':>38}: {agent / task:.0f}x "
          "(Ray's report of the agent's death and restart)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pairs", type=int, default=20_000, help="lessor pairs timed")
    parser.add_argument("--semaphore-pairs", type=int, default=500, help="semaphore pairs timed")
    parser.add_argument("--warm", type=int, default=200, help="pairs before the timed ones")
    parser.add_argument("--repeats", type=int, default=5, help="holder task kills, per figure")
    parser.add_argument("--agent-repeats", type=int, default=3, help="node agent kills")
    args = parser.parse_args()
    with stdout_to_stderr():
        result = run(args)
    if result["leftover_processes"]:
        print(f"bench_ray: processes left behind: {result['leftover_processes']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        table(result)


if __name__ == "__main__":
    main()
