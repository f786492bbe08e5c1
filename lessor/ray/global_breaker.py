"""One circuit breaker for the whole cluster: its actor, and how node agents reach it.

On one machine a breaker's state lives in the runtime's BreakerActor, and worker
processes reach it through the runtime's socket (``breaker:<name>``). On Ray the
BreakerActor runs in ``lessor-breaker-<name>`` (:class:`GlobalBreaker`), and each
node agent registers, under that same target name, a :class:`BreakerRelay` that
carries its tasks' requests there as msgpack frames and the actor's pushes back. A
task's ``lessor.connect().breaker(name)`` is therefore the worker's handle, unchanged:
closed-state calls cost no round trip, outcomes go in batches, and at most
``half_open_calls`` probes run in the whole cluster.

Holders are the tasks' processes, named by node (``worker:<node>/<worker id>:<pid>``),
so that a probe's permit comes back when its task's process ends (the agent says so)
and a state change reaches every subscribed process on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import ray

from lessor import holder as holders
from lessor.actors.breaker import BreakerActor, BreakerLineage
from lessor.core.breaker import IGNORED
from lessor.errors import LessorError
from lessor.holder import Holder
from lessor.protocol.codec import decode, encode
from lessor.protocol.messages import ErrorReply, Message, Outcomes, ProbePermit, ProbeResult
from lessor.ray.global_pool import AsyncReply
from lessor.ray.names import NAMESPACE
from lessor.runtime.breakers import BreakerTarget
from lessor.specs import BreakerSpec
from lessor.transport.handshake import error_from_reply

__all__ = ["BreakerRelay", "GlobalBreaker"]

log = logging.getLogger("lessor.ray")

#: Seconds a relayed request may wait for the breaker's answer.
RELAY_TIMEOUT = 30.0
_ONE_WAY = (Outcomes, ProbeResult)


def _task_holder(node: str, holder: str) -> Holder:
    """A task process's holder, as the global breaker knows it: qualified by node."""
    return Holder("worker", f"{node[:12]}/{Holder.parse(holder).id}")


class _PushToTask:
    """The breaker's pushes to one task process: through its node's agent, after the turn."""

    def __init__(self, agent: Any, worker_id: str) -> None:
        self.agent = agent
        self.worker_id = worker_id

    def tell(self, message: Message, wait: float = 0.0) -> None:
        self.agent.push.remote(self.worker_id, encode(message))


class GlobalBreaker:
    """``lessor-breaker-<name>``: the cluster's BreakerActor. Started by
    :func:`lessor.ray.start`; node agents call :meth:`deliver` and :meth:`gone`."""

    def __init__(self, spec: BreakerSpec) -> None:
        self.spec = spec
        self._ref = BreakerActor.start(spec, lineage=BreakerLineage())
        self._target = BreakerTarget(self._ref, spec.name)

    async def deliver(
        self, node: str, agent: str, holder: str, frame: bytes, wait: bool
    ) -> tuple[str, Any]:
        """A task's request: ``("ok", frame or None)`` or ``("error", (class, text))``."""
        task = _task_holder(node, holder)
        message = decode(frame)
        if holders.holder_receiver(task) is None:  # (its pushes: through its agent)
            worker_id = Holder.parse(holder).id.rpartition(":")[0]
            handle = ray.get_actor(agent, namespace=NAMESPACE)
            holders.bind_receiver(task, _PushToTask(handle, worker_id))
        if not wait:
            self._target.deliver(message, None, task)
            return ("ok", None)
        reply = AsyncReply(asyncio.get_running_loop())
        try:
            self._target.deliver(message, reply, task)
            answer = await asyncio.wait_for(asyncio.shield(reply.future), RELAY_TIMEOUT)
        except LessorError as exc:
            return ("error", (type(exc).__name__, str(exc)))
        except TimeoutError:
            if not reply.cancel():  # answered meanwhile: a probe permit goes back
                self._target.undo(reply.result(), task)
            return ("error", ("LessorError", f"breaker {self.spec.name!r} did not answer"))
        return ("ok", None if answer is None else encode(answer))

    async def gone(self, node: str, holder: str) -> None:
        """A task process of that node ended: its probe permits come back."""
        holders.report_gone(_task_holder(node, holder))

    async def stop(self) -> None:
        await asyncio.to_thread(lambda: self._ref.stop(block=True, timeout=5.0))


class BreakerRelay:
    """The node agent's ``breaker:<name>`` target: its tasks' requests go to the
    global breaker, answers come back on the reply (from Ray's thread, never a turn)."""

    def __init__(self, name: str, handle: Any, node: str, agent: str) -> None:
        self.name = name
        self.handle = handle
        self.node = node
        self.agent = agent

    def deliver(self, message: Message, reply: Any, holder: Holder) -> None:
        wait = reply is not None and not isinstance(message, _ONE_WAY)
        call = self.handle.deliver.remote(self.node, self.agent, str(holder), encode(message), wait)
        if wait:
            call.future().add_done_callback(lambda done: _answer(reply, done))

    def cancel(self, reply: Any, holder: Holder) -> None:
        with contextlib.suppress(Exception):
            if not reply.cancel() and isinstance(reply.value, ProbePermit):  # never seen: back
                result = ProbeResult(self.name, reply.value.probe, IGNORED)
                self.deliver(result, None, holder)

    def holder_gone(self, holder: Holder) -> None:
        if holder.kind == "worker":
            self.handle.gone.remote(self.node, str(holder))


def _answer(reply: Any, done: Any) -> None:
    try:
        status, value = done.result()
    except Exception as exc:  # the global breaker is unreachable (restarting)
        reply.set_exception((type(exc), LessorError(f"breaker unreachable: {exc}"), None))
        return
    if status == "ok":
        reply.set(None if value is None else decode(value))
    else:
        error = error_from_reply(ErrorReply(*value))
        reply.set_exception((type(error), error, None))
