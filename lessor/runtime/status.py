"""One snapshot of everything a runtime runs: what ``lessor top``, ``lessor status``,
the demo's live view and the Prometheus endpoint all read.

It is gathered from outside every actor's turn (each part is one ask of its own), so
the parts are each consistent but not taken at one instant. A part that cannot answer
(an actor restarting, the runtime shutting down) is left out and named in
``unavailable``, rather than failing the whole snapshot. The dict form
(:meth:`RuntimeStatus.as_dict`) holds only JSON and msgpack values: it crosses the
control socket and is printed by ``lessor status --json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import pykka

from lessor.errors import LessorError
from lessor.supervisor.worker_messages import WorkerInfo, WorkerStatus

__all__ = ["RuntimeStatus", "holder_process", "reclaims_by_reason", "walk"]

#: Seconds each part of a snapshot may take to answer before it is left out.
PART_TIMEOUT = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class RuntimeStatus:
    """A runtime now. Times in seconds, sizes in bytes, stats as their ``as_dict()``.

    - ``tree``: the supervision tree (``Runtime.tree()``): every node's ``id``,
      ``path``, ``kind``, ``state``, ``restarts``, ``uptime_s`` and ``children``; a
      worker group's children are its workers, each with ``pid``, ``running``,
      ``restarts``, ``recycles``, ``uptime_s`` and ``leases`` (pool -> leases held).
    - ``pools``: by name, ``scope``, ``max_size``, ``max_total`` and ``stats`` (a
      ``PoolStats``; for ``scope="process"`` the global quota's) and, for process-scoped
      pools, ``per_process`` (each process's own pool, as ``LocalPoolStats``).
    - ``breakers``, ``batchers``: by name, their stats; ``memory``: the memory
      manager's ``MemoryStats`` (None without one).
    - ``workers``: every worker of every group, flat, as in the tree.
    - ``events``: how many events of each kind the tree has emitted since it started.
    - ``node``: the worker socket's connection counts (None before any worker).
    - ``unavailable``: the parts that did not answer in time.
    """

    at: float
    pid: int
    version: str
    uptime_s: float
    tree: dict[str, Any]
    pools: dict[str, dict[str, Any]]
    breakers: dict[str, dict[str, Any]]
    batchers: dict[str, dict[str, Any]]
    memory: dict[str, Any] | None
    workers: list[dict[str, Any]]
    events: dict[str, int]
    node: dict[str, int] | None
    unavailable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def part(name: str, unavailable: list[str], get: Callable[[], T]) -> T | None:
    """``get()``, or None (and ``name`` noted) if the part cannot answer now."""
    try:
        return get()
    except (LessorError, pykka.ActorDeadError, pykka.Timeout, TimeoutError):
        unavailable.append(name)
        return None


def workers_of(group: Any, path: str, unavailable: list[str]) -> list[dict[str, Any]]:
    """A worker group's workers (``group`` its running actor ref), as status dicts."""

    def ask() -> list[WorkerInfo]:
        ref = group.ref
        if ref is None:
            return []
        infos: list[WorkerInfo] = ref.ask(WorkerStatus(), timeout=PART_TIMEOUT)
        return infos

    infos = part(path, unavailable, ask) or []
    return [{**asdict(info), "group": path, "leases": {}} for info in infos]


def holder_process(holder: str) -> str:
    """The worker id a lease holder's text names (``worker:<id>:<pid>``), or "runtime"."""
    kind, _, rest = holder.partition(":")
    if kind != "worker":
        return "runtime"
    return rest.rpartition(":")[0]


def attach_leases(workers: list[dict[str, Any]], pools: dict[str, dict[str, Any]]) -> None:
    """Fill each worker's ``leases`` (pool -> count) from the pools' holders and, for
    process-scoped pools, from what each worker's own pool last reported."""
    by_id = {w["id"]: w for w in workers}
    for name, pool in pools.items():
        per_process = pool.get("per_process")
        if per_process is not None:  # the quota's holders are processes, not users
            for worker_id, stats in per_process.items():
                if worker_id in by_id and stats["leased"]:
                    by_id[worker_id]["leases"][name] = stats["leased"]
            continue
        for holder, count in pool["stats"]["holders"].items():
            worker = by_id.get(holder_process(holder))
            if worker is not None:
                worker["leases"][name] = worker["leases"].get(name, 0) + count


def nest_workers(tree: dict[str, Any], workers: list[dict[str, Any]]) -> None:
    """Put each group's workers under its node (kind "workers") of the tree."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    for worker in workers:
        by_group.setdefault(worker["group"], []).append(worker)
    for node in walk(tree):
        if node.get("kind") == "workers":
            node["children"] = [
                {"id": w["id"], "path": w["id"], "kind": "process",
                 "state": _worker_state(w), "restarts": w["restarts"],
                 "uptime_s": w["uptime_s"], "pid": w["pid"], "leases": w["leases"],
                 "children": []}
                for w in by_group.get(node["path"], [])
            ]  # fmt: skip


def _worker_state(worker: dict[str, Any]) -> str:
    if worker["running"]:
        return "running"
    if worker["restarting"]:
        return "restarting"
    return "done" if worker["done"] else "exited"


def walk(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a tree dict, depth first, the root first."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.get("children", [])))
    return out


def with_paths(tree: dict[str, Any], parent: str = "") -> dict[str, Any]:
    """Give every node of a supervisor's tree its ``path`` (``root/workers-1``)."""
    path = f"{parent}/{tree['id']}" if parent else tree["id"]
    tree["path"] = path
    for child in tree.get("children", []):
        with_paths(child, path)
    return tree


def reclaims_by_reason(status: RuntimeStatus) -> dict[str, int]:
    """Leases reclaimed across every pool, by why (process-scoped: by their quotas)."""
    total: dict[str, int] = {}
    for pool in status.pools.values():
        for why, count in pool["stats"]["reclaimed_by"].items():
            total[why] = total.get(why, 0) + count
    return total
