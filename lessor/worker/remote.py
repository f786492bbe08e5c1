"""RemoteRoute: how a PoolHandle in a worker process reaches a pool of its runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lessor.handles import ops as leases
from lessor.handles.lending import LendingRoute
from lessor.holder import Holder, current_holder
from lessor.protocol.messages import Acquire, Message
from lessor.protocol.pool_messages import Wait

if TYPE_CHECKING:
    from lessor.worker.client import Client

__all__ = ["RemoteActorRoute", "RemoteRoute"]


class RemoteRoute(LendingRoute):
    """A pool in the runtime, seen from a worker: requests are frames on the client's
    connection, and the runtime's pools see the whole process as one holder.

    Releases are judged by the client's :class:`~lessor.handles.ownership.LeaseLedger`
    with no round trip, and with ``cache=True`` (the default of ``client.pool``)
    released leases are parked in this process (see
    :class:`~lessor.handles.lending.LendingRoute`).
    """

    def __init__(
        self,
        client: Client,
        name: str,
        cache: bool = False,
        holder: Callable[[], str] = current_holder,
    ) -> None:
        super().__init__(name, client.ledger, cache=cache, holder=holder)
        self.client = client
        self.draining = client.draining.is_set()
        if cache:
            client.on_push(self.on_notice)
            # (uncached, the poll would cost ~5% of the pair; nothing it reads matters then)
            self._poll = client.read_pushes

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        if timeout is None and isinstance(message, Acquire):
            wait = message.timeout
            if not wait:  # the pool's own acquire_timeout, as in-process (a try, timeout=0,
                wait = self.client.acquire_timeout(self.name)  # may wait for a creation)
            timeout = wait + leases.ACQUIRE_GRACE
        elif timeout is None and isinstance(message, Wait):
            timeout = message.timeout + leases.ACQUIRE_GRACE
        return self.client.ask(self.name, message, timeout)

    def tell(self, message: Message) -> None:
        self.client.tell(self.name, message)


class RemoteActorRoute:
    """Any other actor of the runtime (a breaker), seen from a worker: requests are
    frames on the client's connection; the worker process is the holder."""

    def __init__(self, client: Client, target: str) -> None:
        self.client = client
        self.target = target

    def ask(
        self, message: Message, timeout: float | None = None, holder: Holder | None = None
    ) -> Any:
        return self.client.ask(self.target, message, timeout)

    def tell(self, message: Message) -> None:
        self.client.tell(self.target, message)

    def send(self, message: Message, pending: Any, wait: float) -> None:
        """A request nobody waits for: its answer goes to ``pending.answered``."""
        self.client.ask_later(self.target, message, pending.answered)
