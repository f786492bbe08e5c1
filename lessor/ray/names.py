"""Names in Ray: the namespace, the actors lessor starts, and who holds a token."""

from __future__ import annotations

import ray

from lessor.holder import Holder

__all__ = ["AGENT_PREFIX", "BREAKER_PREFIX", "NAMESPACE", "POOL_PREFIX", "actor_names",
           "agent_holder", "agent_name", "breaker_actor", "parse_agent", "pool_actor"]  # fmt: skip

#: The Ray namespace of every actor lessor starts.
NAMESPACE = "lessor"
AGENT_PREFIX = "lessor-node-"
POOL_PREFIX = "lessor-pool-"
BREAKER_PREFIX = "lessor-breaker-"


def actor_names(prefix: str) -> list[str]:
    """The names of lessor's live actors that start with ``prefix``."""
    return [
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == NAMESPACE and entry["name"].startswith(prefix)
    ]


def agent_name(node_id: str) -> str:
    """The node agent of Ray node ``node_id`` (hex): ``lessor-node-<node id>``."""
    return f"{AGENT_PREFIX}{node_id}"


def parse_agent(name: str) -> str:
    """The node id in an agent's name."""
    return name.removeprefix(AGENT_PREFIX)


def pool_actor(pool: str) -> str:
    """The global pool actor of cluster-wide pool ``pool``: ``lessor-pool-<pool>``."""
    return f"{POOL_PREFIX}{pool}"


def breaker_actor(breaker: str) -> str:
    """The global breaker actor of breaker ``breaker``: ``lessor-breaker-<breaker>``."""
    return f"{BREAKER_PREFIX}{breaker}"


def agent_holder(name: str, pid: int) -> Holder:
    """Who holds an agent process's tokens: ``worker:ray-node-<node id>:<pid>``."""
    return Holder("worker", f"ray-node-{parse_agent(name)}:{pid}")
