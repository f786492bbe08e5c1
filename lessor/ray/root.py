"""``lessor-root``: the specs, the agents' starts, and OTP's restart intensity over Ray's.

Ray restarts a dead node agent at once and for ever (``max_restarts=-1``): an agent
that crashes on start (a factory that cannot import, a node out of memory) would loop.
The root watches every agent (:func:`~lessor.ray.watch.until_gone`) and counts its
restarts against an intensity, as a supervisor counts a child's: more than
``max_restarts`` within ``max_seconds`` and it gives up on that agent, killing it for
good. Agents are independent children (one per node, none needs another), so the
strategy is one_for_one: the other nodes go on. A task on a node given up on gets a
LessorError from ``lessor.connect()`` that says why; its tokens were reclaimed when
the agent died. The counts live in the root's process: if the root itself restarts,
a new window begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lessor.ray.agent import NodeAgent
from lessor.ray.names import NAMESPACE, agent_name
from lessor.ray.watch import SUSPECT_RETRY, until_gone
from lessor.specs import BreakerSpec, PoolSpec
from lessor.supervisor.restarts import RestartIntensity

__all__ = ["ACTOR_OPTIONS", "ROOT", "Root", "start_agent"]

ROOT = "lessor-root"
#: Every actor lessor starts: no CPU held, restarted by Ray, no call ever re-sent.
ACTOR_OPTIONS = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": 0,
                 "lifetime": "detached", "namespace": NAMESPACE}  # fmt: skip


def start_agent(node_id: str, pools: list[PoolSpec], breakers: list[BreakerSpec]) -> Any:
    """Node ``node_id``'s agent, started unless it runs, pinned to that node."""
    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
    actor = ray.remote(NodeAgent).options(
        name=agent_name(node_id), scheduling_strategy=strategy, get_if_exists=True, **ACTOR_OPTIONS
    )
    return actor.remote(node_id, pools, breakers)


class Root:
    """``lessor-root`` (see the module's doc). ``max_restarts`` (default 3) restarts of
    one agent within ``max_seconds`` (default 5.0 s) are allowed; one more gives up."""

    def __init__(
        self,
        pools: list[PoolSpec],
        breakers: list[BreakerSpec],
        max_restarts: int = 3,
        max_seconds: float = 5.0,
    ) -> None:
        self.pools = pools
        self.breakers = breakers
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.given_up: dict[str, str] = {}  # agent name -> why
        self.events: list[tuple[float, str, str]] = []  # (unix time, agent, what)
        self._intensity: dict[str, RestartIntensity] = {}
        self._watching: dict[str, asyncio.Task[None]] = {}
        self._pids: dict[str, int] = {}  # agent name -> the process watched now

    def specs(self) -> list[PoolSpec]:
        return self.pools

    def breaker_specs(self) -> list[BreakerSpec]:
        return self.breakers

    async def agent_for(self, node_id: str) -> tuple[str, str]:
        """Node ``node_id``'s agent, started unless it runs: (its name, ""), or ("", why)
        when the root gave up on it."""
        name = agent_name(node_id)
        if name in self.given_up:
            return "", f"lessor gave up on node {node_id[:12]}'s agent: {self.given_up[name]}"
        handle = start_agent(node_id, self.pools, self.breakers)
        self._watch(name, handle)
        return name, ""

    async def watch(self, node_ids: list[str]) -> None:
        """Count the restarts of these nodes' agents (started by ``lessor.ray.start``)."""
        for node_id in node_ids:
            name = agent_name(node_id)
            with contextlib.suppress(ValueError):
                self._watch(name, ray.get_actor(name, namespace=NAMESPACE))

    async def status(self) -> dict[str, Any]:
        """The agent processes watched (name -> pid), restarts in the current window per
        agent, who was given up on, and the events."""
        return {
            "watching": dict(self._pids),
            "restarts": {name: i.recent for name, i in self._intensity.items()},
            "given_up": dict(self.given_up),
            "events": list(self.events),
        }

    def _watch(self, name: str, handle: Any) -> None:
        task = self._watching.get(name)
        if task is None or task.done():
            self._watching[name] = asyncio.create_task(self._follow(name, handle))

    async def _follow(self, name: str, handle: Any) -> None:
        pid = await self._pid(handle)
        while pid is not None:
            self._pids[name] = pid
            why = await until_gone(handle, pid)
            self._pids.pop(name, None)
            if why == "agent died":  # for good (killed, or its node is dead)
                self.events.append((time.time(), name, "died for good"))
                return
            pid = await self._pid(handle)
            intensity = self._intensity.setdefault(
                name, RestartIntensity(self.max_restarts, self.max_seconds)
            )
            if intensity.add(time.monotonic()):
                self.events.append((time.time(), name, f"restarted by Ray ({why}), pid {pid}"))
                continue
            self.given_up[name] = (
                f"{intensity.recent} restarts within {self.max_seconds:g}s "
                f"(max_restarts={self.max_restarts})"
            )
            self.events.append((time.time(), name, f"given up: {self.given_up[name]}"))
            ray.kill(handle, no_restart=True)
            return

    async def _pid(self, handle: Any) -> int | None:
        """The agent's pid once it answers; None if it is dead for good."""
        while True:
            try:
                return int(await handle.whoami.remote())
            except ActorDiedError:
                return None
            except (ActorUnavailableError, RayError):
                await asyncio.sleep(SUSPECT_RETRY)
