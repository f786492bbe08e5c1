"""The runtime seen from outside: ``tree()``, ``status()``, ``events()``, the control
socket (``lessor top`` / ``lessor status``) and the Prometheus endpoint.

A part of :class:`~lessor.runtime.runtime.Runtime`, kept apart because everything
here only reads: each snapshot is asked of the actors from the caller's thread,
never from inside a turn.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lessor.errors import LessorError, ProtocolError
from lessor.handles.local import LocalRoute
from lessor.handles.pool import PoolHandle
from lessor.holder import Holder
from lessor.protocol.messages import GetStatus, Message, Status
from lessor.runtime.batchers import Batchers
from lessor.runtime.breakers import Breakers
from lessor.runtime.memory import RuntimeMemory
from lessor.runtime.outcome import GroupOutcome
from lessor.runtime.process_stats import ProcessPoolStats
from lessor.runtime.shutdown import ask as _ask
from lessor.runtime.status import (
    PART_TIMEOUT,
    RuntimeStatus,
    attach_leases,
    nest_workers,
    part,
    with_paths,
    workers_of,
)
from lessor.specs import PoolSpec
from lessor.supervisor.child import ChildRef
from lessor.supervisor.events import Event, EventLog
from lessor.supervisor.supervisor import GetTree
from lessor.transport.control import STATUS_TARGET, publish, unpublish
from lessor.transport.node import Node

if TYPE_CHECKING:
    from lessor.runtime.metrics import MetricsServer

__all__ = ["Observing"]


class Observing:
    """Runtime's read-only views (it provides the fields below)."""

    event_log: EventLog
    _lock: threading.RLock
    _root: Any
    _pools: dict[str, PoolHandle]
    _process_specs: dict[str, PoolSpec]
    _breakers: Breakers
    _batchers: Batchers
    _memory: RuntimeMemory | None
    _node: Node | None
    _outcomes: dict[ChildRef, GroupOutcome]
    _started: float
    _metrics: MetricsServer | None
    _control: Path | None

    if TYPE_CHECKING:

        def _check(self) -> None: ...

        def process_pool_stats(self, name: str) -> ProcessPoolStats: ...

        @property
        def node(self) -> Node: ...

    def tree(self) -> dict[str, Any]:
        """The live tree: every node's id, path, kind, state, restarts, uptime and
        children; worker groups list their processes with pid, uptime, restarts and
        the leases each holds (see :class:`~lessor.runtime.status.RuntimeStatus`)."""
        return self.status().tree

    def events(self) -> list[Event]:
        """What the tree did, oldest first: starts, failures, restarts, reclaimed leases,
        worker exits, memory actions (``Event(at, kind, node, detail)``: ``node`` a path,
        ``at`` in ``time.time()`` seconds). The last ``Runtime(events=1000)`` are kept."""
        return self.event_log.snapshot()

    def status(self) -> RuntimeStatus:
        """A snapshot of the whole runtime (see :class:`RuntimeStatus`)."""
        self._check()
        missing: list[str] = []
        tree = with_paths(cast(dict[str, Any], _ask(self._root, GetTree(), 30)))
        with self._lock:
            pools = dict(self._pools)
            specs = dict(self._process_specs)
            groups = list(self._outcomes)
            node = self._node
        pool_status = {name: self._pool_status(name, handle, specs.get(name), missing)
                       for name, handle in pools.items()}  # fmt: skip
        workers = [w for g in groups for w in workers_of(g, g.path, missing)]
        attach_leases(workers, {k: v for k, v in pool_status.items() if v})
        nest_workers(tree, workers)
        memory = self._memory.handle if self._memory is not None else None
        memory_stats = None
        if memory is not None:
            memory_stats = part("memory", missing, lambda: memory.stats(PART_TIMEOUT).as_dict())
        node_stats = None
        if node is not None:
            node_stats = dict(vars(node.stats))
        return RuntimeStatus(
            at=time.time(),
            pid=os.getpid(),
            version=_version(),
            uptime_s=round(time.monotonic() - self._started, 3),
            tree=tree,
            pools={k: v for k, v in pool_status.items() if v},
            breakers=_stats_of(self._breakers.all(), "breaker", missing),
            batchers=_stats_of(self._batchers.all(), "batcher", missing),
            memory=memory_stats,
            workers=workers,
            events=self.event_log.counts(),
            node=node_stats,
            unavailable=missing,
        )

    def _pool_status(
        self, name: str, handle: PoolHandle, process_spec: PoolSpec | None, missing: list[str]
    ) -> dict[str, Any]:
        spec = process_spec or cast(LocalRoute, handle.route).spec
        out: dict[str, Any] = {"scope": spec.scope, "max_size": spec.max_size,
                               "max_total": spec.max_total}  # fmt: skip
        if process_spec is not None:
            stats = part(f"pool:{name}", missing, lambda: self.process_pool_stats(name))
            if stats is None:
                return {}
            out["stats"] = stats.quota.as_dict()
            out["per_process"] = {k: v.as_dict() for k, v in stats.per_process.items()}
            return out
        pool_stats = part(f"pool:{name}", missing, handle.stats)
        if pool_stats is None:
            return {}
        out["stats"] = pool_stats.as_dict()
        return out

    # -- serving ---------------------------------------------------------------------

    def _open_views(self, control: bool, metrics_port: int | None) -> None:
        """The constructor's ``control`` and ``metrics_port``; on failure, shut down."""
        try:
            if control:
                self.serve_control()
            if metrics_port is not None:
                self.serve_metrics(metrics_port)
        except BaseException:
            cast(Any, self).shutdown(0.0)
            raise

    def serve_control(self) -> str:
        """Let ``lessor top`` and ``lessor status`` attach; returns the socket's path.

        Writes the control key (0600, next to the socket) and this runtime's entry in
        :func:`~lessor.transport.control.registry_dir`; both go at shutdown.
        """
        node = self.node
        with self._lock:
            if self._control is None:
                node.register(STATUS_TARGET, _StatusTarget(self.status))
                self._control = publish(node.address, node.control_key())
        return node.address

    def serve_metrics(self, port: int = 9464, addr: str = "127.0.0.1") -> int:
        """Serve Prometheus metrics on ``http://addr:port/metrics`` until shutdown.

        ``port`` (default 9464; 0 picks a free one) and ``addr`` (default 127.0.0.1:
        this machine only). Returns the port. Needs ``lessor[metrics]``
        (prometheus_client). Every scrape takes one :meth:`status` snapshot.
        """
        from lessor.runtime.metrics import MetricsServer

        self._check()
        with self._lock:
            if self._metrics is not None:
                raise LessorError(f"this runtime serves metrics on port {self._metrics.port}")
            self._metrics = MetricsServer(self.status, port, addr)
            return self._metrics.port

    @property
    def metrics_port(self) -> int | None:
        """The port metrics are served on (None when they are not)."""
        metrics = self._metrics
        return None if metrics is None else metrics.port

    def _stop_serving(self) -> None:
        with self._lock:
            metrics, self._metrics = self._metrics, None
            control, self._control = self._control, None
        if metrics is not None:
            metrics.close()
        if control is not None:
            unpublish(control)


class _StatusTarget:
    """Answers a control peer's GetStatus on its connection's reader thread (no turn)."""

    def __init__(self, status: Callable[[], RuntimeStatus]) -> None:
        self._status = status

    def deliver(self, message: Message, reply: Any, holder: Holder) -> None:
        if not isinstance(message, GetStatus):
            raise ProtocolError(f"the control socket answers GetStatus, not {message!r}")
        if reply is not None:
            reply.set(Status(self._status().as_dict()))

    def cancel(self, reply: Any, holder: Holder) -> None:
        """Nothing to give back: a status is only read."""


def _version() -> str:
    import lessor  # (lessor/__init__ imports the runtime: read it once it is made)

    return lessor.__version__


def _stats_of(handles: dict[str, Any], kind: str, missing: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, handle in handles.items():
        stats = part(f"{kind}:{name}", missing, handle.stats)
        if stats is not None:
            out[name] = stats.as_dict()
    return out
