"""What the runtime knows of every process's own pool of a process-scoped pool.

Workers tell it (``LocalPoolStats``, every ``REPORT_INTERVAL`` in which their pool
changed) to the quota's route, which keeps each worker's last word until the worker
is gone (:class:`StatsBoard`); ``Runtime.process_pool_stats`` puts them together with
the quota's stats and the runtime's own pool's (:class:`ProcessPoolStats`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lessor import holder as holders
from lessor.errors import ProtocolError
from lessor.handles.local import LocalRoute
from lessor.holder import Holder
from lessor.protocol.messages import Message, PoolStats
from lessor.protocol.quota_messages import LocalPoolStats
from lessor.specs import PoolSpec
from lessor.supervisor.child import ChildRef

if TYPE_CHECKING:
    from lessor.actors.reply import Reply

__all__ = ["ProcessPoolStats", "QuotaRoute", "StatsBoard"]


@dataclass(frozen=True)
class ProcessPoolStats:
    """Process-scoped pool ``pool`` across processes.

    ``quota``: the global quota's stats; its ``leased`` is how many connections are open
    in all processes together, ``waiting`` how many openings wait for a token.
    ``per_process``: each process's own pool, by process: ``"runtime"`` for the runtime's
    own (once it was used), the worker id (``root/workers-1.0.1``) for a worker, as it
    last reported (``REPORT_INTERVAL``, 0.2 s, after a change). A worker that never used
    the pool, or has exited, is not listed.
    """

    pool: str
    quota: PoolStats
    per_process: dict[str, LocalPoolStats]

    def as_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "quota": self.quota.as_dict(),
            "per_process": {key: s.as_dict() for key, s in self.per_process.items()},
        }


class StatsBoard:
    """What each worker last said about its own pools; a worker's word goes with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._said: dict[str, dict[Holder, LocalPoolStats]] = {}  # pool -> worker -> stats
        self._listening = False
        self._closed = False

    def put(self, holder: Holder, stats: LocalPoolStats) -> None:
        with self._lock:
            if self._closed:  # (the runtime has shut down)
                return
            if not self._listening:
                holders.subscribe(self._gone)
                self._listening = True
            self._said.setdefault(stats.pool, {})[holder] = stats

    def of(self, pool: str) -> dict[str, LocalPoolStats]:
        """Pool ``pool`` by worker id."""
        with self._lock:
            said = dict(self._said.get(pool, {}))
        return {holder.id.rpartition(":")[0]: stats for holder, stats in said.items()}

    def _gone(self, holder: Holder) -> None:
        with self._lock:
            for said in self._said.values():
                said.pop(holder, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        holders.unsubscribe(self._gone)


class QuotaRoute(LocalRoute):
    """The quota of a process-scoped pool, as workers reach it: their Acquires and
    Releases go to its actor; their LocalPoolStats are kept on the board."""

    def __init__(self, target: ChildRef, spec: PoolSpec, board: StatsBoard) -> None:
        super().__init__(target, spec)
        self.board = board

    def deliver(self, message: Message, reply: Reply | None, holder: Holder) -> None:
        if isinstance(message, LocalPoolStats):
            if message.pool != self.name or holder.kind != "worker":
                raise ProtocolError(f"LocalPoolStats for {message.pool!r} from {holder}")
            self.board.put(holder, message)
            return
        super().deliver(message, reply, holder)
