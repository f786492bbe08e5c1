"""Starting lessor on a Ray cluster, finding it from a task, and stopping it.

Everything is a detached actor in namespace ``lessor``, so it outlives the driver
that started it and any driver can find or stop it:

* ``lessor-root`` (:class:`Root`) keeps the pool specs and starts a node's agent the
  first time a task on that node connects (a node that joined after ``start``);
* ``lessor-pool-<name>``: one :class:`~lessor.ray.global_pool.GlobalPool` per pool;
* ``lessor-breaker-<name>``: one :class:`~lessor.ray.global_breaker.GlobalBreaker`
  per breaker;
* ``lessor-node-<node id>``: one :class:`~lessor.ray.agent.NodeAgent` per node.

Every one of them has ``num_cpus=0`` (an actor holds what it asks for as long as it
lives) and ``max_restarts=-1``; none of their calls is retried by Ray
(``max_task_retries=0``): a retried ``take`` could be granted twice. Giving a token
back is idempotent, so an agent may retry that itself.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lessor.errors import LessorError, NotPortable
from lessor.ray.global_breaker import GlobalBreaker
from lessor.ray.global_pool import MAX_TAKES, TAKES, GlobalPool
from lessor.ray.names import (
    AGENT_PREFIX,
    BREAKER_PREFIX,
    NAMESPACE,
    POOL_PREFIX,
    actor_names,
    agent_name,
    breaker_actor,
    pool_actor,
)
from lessor.ray.root import ACTOR_OPTIONS, ROOT, Root, start_agent
from lessor.specs import BreakerSpec, PoolSpec

__all__ = ["ROOT", "RayLessor", "Root", "find", "start", "stop", "worker_env"]


def _alive_nodes() -> list[str]:
    return [node["NodeID"] for node in ray.nodes() if node.get("Alive")]


def _on_head() -> dict[str, Any]:
    """Where the global pools, breakers and root go: the head node, whose death
    ends the cluster anyway, so a worker node's death never restarts them."""
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], False)}
    return {}


class RayLessor:
    """What :func:`start` started: its pools' names, and how to stop it all."""

    def __init__(self, pools: Sequence[str]) -> None:
        self.pools = list(pools)

    def agents(self) -> list[Any]:
        """The handles of the node agents running now."""
        return [ray.get_actor(name, namespace=NAMESPACE) for name in actor_names(AGENT_PREFIX)]

    def agent(self, node_id: str) -> Any:
        return ray.get_actor(agent_name(node_id), namespace=NAMESPACE)

    def global_pool(self, pool: str) -> Any:
        """The handle of pool ``pool``'s global actor (``stats.remote()``, ``info.remote()``)."""
        return ray.get_actor(pool_actor(pool), namespace=NAMESPACE)

    def stop(self, timeout: float = 10.0) -> None:
        stop(timeout)


def start(
    pools: Sequence[PoolSpec],
    breakers: Sequence[BreakerSpec] = (),
    *,
    suspect_timeout: float | None = None,
    max_restarts: int = 3,
    max_seconds: float = 5.0,
) -> RayLessor:
    """Start lessor on the Ray cluster this driver is connected to (``ray.init()`` first).

    Each pool is cluster-wide: at most ``max_total`` (default ``max_size``) resources
    in the whole cluster, at most ``max_size`` on one node. Its resources are borrowed
    across processes, so its factory must make portable ones (tokens: slot numbers,
    GPU ids, API keys); NotPortable otherwise. ``suspect_timeout`` (default None:
    wait for Ray to declare the agent dead; seconds) reclaims the tokens of an agent
    that stays unreachable that long, dead or partitioned (docs/ray.md).
    Starting again with the same pools returns what runs already; with other pools or
    settings it raises LessorError (``stop()`` first). A spec with a ``breaker`` is
    refused: pools behind breakers are not supported on Ray yet.

    ``max_restarts`` (default 3) restarts of one node agent by Ray within
    ``max_seconds`` (default 5.0 s) are allowed; one more and ``lessor-root`` gives up
    on that node's agent (:mod:`.root`).

    ``breakers`` are cluster-wide too: one state for every task of every node
    (``lessor.connect().breaker(name)``), and at most ``half_open_calls`` probes in the
    cluster (:mod:`.global_breaker`).
    """
    if not ray.is_initialized():
        raise LessorError("lessor.ray.start needs a Ray cluster: call ray.init() first")
    specs, guards = list(pools), list(breakers)
    _refuse_other_specs(specs, guards)
    head = _on_head()
    global_pool = ray.remote(concurrency_groups={TAKES: MAX_TAKES})(GlobalPool)
    handles = [
        global_pool.options(
            name=pool_actor(spec.name), get_if_exists=True, **head, **ACTOR_OPTIONS
        ).remote(spec, suspect_timeout)
        for spec in specs
    ]
    ray.get([handle.info.remote() for handle in handles])
    global_breaker = ray.remote(GlobalBreaker)
    for spec in guards:
        global_breaker.options(
            name=breaker_actor(spec.name), get_if_exists=True, **head, **ACTOR_OPTIONS
        ).remote(spec)
    root = ray.remote(Root).options(name=ROOT, get_if_exists=True, **head, **ACTOR_OPTIONS)
    root = root.remote(specs, guards, max_restarts, max_seconds)
    nodes = _alive_nodes()
    agents = [start_agent(node_id, specs, guards) for node_id in nodes]
    ray.get([agent.whoami.remote() for agent in agents])
    ray.get(root.watch.remote(nodes))
    return RayLessor([spec.name for spec in specs])


def _settings(spec: Any) -> dict[str, Any]:
    """A spec's settings, comparable after a trip through Ray (functions by name)."""
    out = {}
    for f in fields(spec):
        value = getattr(spec, f.name)
        out[f.name] = getattr(type(value) if f.name == "factory" else value, "__qualname__", value)
    return out


def _refuse_other_specs(specs: list[PoolSpec], breakers: list[BreakerSpec]) -> None:
    """``start`` again is fine with the same pools; different ones would be half applied
    (the running agents keep theirs), so they are refused."""
    for spec in specs:
        if not spec.factory.portable:
            raise NotPortable(
                f"pool {spec.name!r}: on Ray a pool lends its resources to other processes, "
                "so its factory must make portable ones (TokenFactory)"
            )
        if spec.breaker is not None:
            raise LessorError(
                f"pool {spec.name!r}: a pool behind a breaker is not supported on Ray yet "
                "(guard the calls with the breaker instead)"
            )
    try:
        root = ray.get_actor(ROOT, namespace=NAMESPACE)
    except ValueError:
        return
    running = ray.get(root.specs.remote())
    guards = ray.get(root.breaker_specs.remote())
    if [_settings(s) for s in [*running, *guards]] != [_settings(s) for s in [*specs, *breakers]]:
        names = ", ".join(s.name for s in [*running, *guards])
        raise LessorError(
            f"lessor already runs on this cluster with other pools or settings ({names}): "
            "call lessor.ray.stop() first"
        )


def find() -> RayLessor | None:
    """What runs on this cluster, started by any driver; None if nothing does."""
    try:
        root = ray.get_actor(ROOT, namespace=NAMESPACE)
    except ValueError:
        return None
    return RayLessor([spec.name for spec in ray.get(root.specs.remote())])


def stop(timeout: float = 10.0) -> None:
    """Drain every agent (tasks get ShuttingDown, tokens go back), then remove lessor's
    actors from the cluster. ``timeout`` (default 10.0 s) is each agent's drain."""
    agents = [ray.get_actor(name, namespace=NAMESPACE) for name in actor_names(AGENT_PREFIX)]
    for ref in [agent.shutdown.remote(timeout) for agent in agents]:
        with contextlib.suppress(ray.exceptions.RayError):  # (a dead agent has nothing to drain)
            ray.get(ref, timeout=timeout + 10.0)
    for agent in agents:
        ray.kill(agent, no_restart=True)
    pools = [
        ray.get_actor(name, namespace=NAMESPACE)
        for name in actor_names(POOL_PREFIX) + actor_names(BREAKER_PREFIX)
    ]
    for ref in [pool.stop.remote() for pool in pools]:
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(ref, timeout=10.0)
    for pool in pools:
        ray.kill(pool, no_restart=True)
    if ROOT in actor_names(ROOT):
        ray.kill(ray.get_actor(ROOT, namespace=NAMESPACE), no_restart=True)
    deadline = time.monotonic() + 10.0
    while actor_names("lessor-") and time.monotonic() < deadline:
        time.sleep(0.05)  # until Ray forgets their names: start() may be called again


def worker_env() -> tuple[dict[str, str], dict[str, BreakerSpec]]:
    """What ``lessor.connect()`` needs in a Ray task or actor: its node agent's socket
    and a key for this process, and the cluster's breakers. The agent is started if
    the node has none yet."""
    if not ray.is_initialized():
        raise LessorError("lessor.connect() outside a worker needs Ray: call ray.init() first")
    node_id = ray.get_runtime_context().get_node_id()
    try:
        agent = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
    except ValueError:
        try:
            root = ray.get_actor(ROOT, namespace=NAMESPACE)
        except ValueError:
            raise LessorError(
                "lessor is not running on this Ray cluster: call lessor.ray.start(pools) "
                "in a driver first"
            ) from None
        name, refused = ray.get(root.agent_for.remote(node_id))
        if refused:
            raise LessorError(refused) from None
        agent = ray.get_actor(name, namespace=NAMESPACE)
    env: dict[str, str] = ray.get(agent.env.remote(os.getpid()))
    breakers: dict[str, BreakerSpec] = ray.get(agent.breakers.remote())
    return env, breakers
