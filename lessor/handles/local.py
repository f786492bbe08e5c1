"""LocalRoute: how a PoolHandle in the pool's own process reaches its PoolActor.

It sends the same messages a worker process would (``ask(Acquire(...))``) with the
caller's identity in the envelope; the lease API comes from :class:`LeaseOps`. A
request runs on the caller's thread when the pool is idle (see
:mod:`lessor.actors.base`), so a pair costs no thread hand-off, and ``release``
waits for its answer so that a bad release raises as it does in a worker. The
handle is also what the runtime's node delivers workers' requests to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import pykka

from lessor.actors.base import LessorActor
from lessor.actors.pool import PoolActor
from lessor.actors.pool_messages import BreakerGate, CancelAcquire
from lessor.actors.reply import OneShot, Reply, answer
from lessor.errors import (
    AcquireTimeout,
    LessorError,
    NotPortable,
    PoolClosed,
)
from lessor.handles.actor_route import ActorRoute
from lessor.handles.ops import ACQUIRE_GRACE, REQUEST_TIMEOUT, LeaseOps
from lessor.handles.pool import PoolHandle
from lessor.holder import Holder, current_holder
from lessor.protocol.messages import Acquire, Describe, Lease, Message, PoolInfo, Release
from lessor.protocol.pool_messages import Wait
from lessor.specs import PoolSpec
from lessor.supervisor.child import ChildRef

__all__ = ["Cancellable", "LocalRoute", "start_pool"]


class Cancellable(Reply, Protocol):
    """A reply its caller may give up on: ``cancel`` races the answer for one claim."""

    def cancel(self) -> bool: ...

    def result(self) -> Any: ...


class LocalRoute(ActorRoute, LeaseOps):
    """A running pool in this process; cheap to copy, safe to share between threads.

    It is also what the runtime's node delivers workers' requests to.
    """

    closed = PoolClosed
    kind = "pool"

    def __init__(
        self,
        target: pykka.ActorRef[Any] | ChildRef,
        spec: PoolSpec,
        holder: Callable[[], Holder] = current_holder,
    ) -> None:
        super().__init__(target, spec.name, holder)
        self.spec = spec
        self.factory = spec.factory

    def ask(
        self, message: Message, timeout: float | None = None, holder: Holder | None = None
    ) -> Any:
        """Send a request and wait for its answer; errors come back raised.

        The request usually runs on this thread (the pool was idle); otherwise it
        waits for the thread that holds the pool's turn to handle it.
        """
        if timeout is None:
            if isinstance(message, Acquire):  # (a try, timeout=0, may wait for a creation)
                timeout = (message.timeout or self.spec.acquire_timeout) + ACQUIRE_GRACE
            elif isinstance(message, Wait):
                timeout = message.timeout + ACQUIRE_GRACE
            else:
                timeout = REQUEST_TIMEOUT
        actor = self._actor(timeout)
        reply = OneShot()
        holder = holder or self._holder()
        try:
            actor.deliver(message, reply, holder)
            return reply.get(timeout)
        except TimeoutError:  # the reply is cancelled: a late grant goes back to the pool
            if isinstance(message, Acquire):
                actor.deliver_internal(CancelAcquire(reply, holder))
                raise AcquireTimeout(f"pool {self.name!r} did not answer in {timeout:g}s") from None
            raise PoolClosed(f"pool {self.name!r} did not answer in {timeout:g}s") from None
        except LessorError:  # the pool's own answer
            raise
        except BaseException:  # interrupted while waiting (KeyboardInterrupt): lose nothing
            if isinstance(message, Acquire):
                self._abandon(actor, reply, holder)
            raise

    def _abandon(self, actor: LessorActor, reply: Cancellable, holder: Holder) -> None:
        """The caller stops waiting for an Acquire: cancel it, or give back what it got."""
        if reply.cancel():
            actor.deliver_internal(CancelAcquire(reply, holder))
            return
        with contextlib.suppress(Exception):
            granted = reply.result()  # the answer won the race: it is ours to return
            if isinstance(granted, Lease):
                actor.deliver(Release(granted.id), None, holder)

    def tell(self, message: Message) -> None:
        """Send without waiting for the answer; a refusal is logged by the pool."""
        self._actor(REQUEST_TIMEOUT).deliver(message, None, self._holder())

    def release(self, lease: Lease, broken: bool = False) -> None:
        """Give a lease back; a double, foreign, unknown or stale release raises here.

        A resource that needs a reset is reset on this thread when the pool's turn
        ran here (an idle pool: the usual case), else on a factory thread; either
        way before the next borrow can have it.
        """
        self.ask(Release(lease.id, broken))

    # -- as a target of remote requests (the runtime's node delivers them here) --------

    def deliver(self, message: Message, reply: Reply | None, holder: Holder) -> None:
        """Hand a request from a worker process to the pool, without waiting."""
        if isinstance(message, Describe):  # the spec is the handle's: no turn needed
            answer(reply, PoolInfo(self.name, self.spec.acquire_timeout, self.spec.max_size))
            return
        if isinstance(message, Acquire) and not self.spec.factory.portable:
            raise NotPortable(
                f"pool {self.name!r} holds resources that cannot cross processes; "
                "use a process-scoped pool in the worker"
            )
        self._actor(0.0).deliver(message, reply, holder)

    def cancel(self, reply: Cancellable, holder: Holder) -> None:
        """The remote caller gave up on an Acquire (poolboy's cancel_waiting).

        ``reply.cancel()`` decides the race with a grant: either the request is
        dropped from the queue, or the lease the caller will never read is released.
        """
        with contextlib.suppress(LessorError):
            self._abandon(self._actor(0.0), reply, holder)

    def stop(self, timeout: float | None = None) -> None:
        """Stop an unsupervised pool: waiters get PoolClosed, resources are destroyed.

        A supervised pool is stopped by its Runtime's shutdown instead.
        """
        if isinstance(self._target, ChildRef):
            raise TypeError("a supervised pool stops with its Runtime (runtime.shutdown())")
        self._target.stop(block=True, timeout=timeout)


def start_pool(
    spec: PoolSpec, *, cache: bool = False, gate: Callable[[], BreakerGate] | None = None
) -> PoolHandle:
    """Start an unsupervised PoolActor (the Runtime supervises the ones it starts).

    ``cache=True`` (default False) borrows through an in-process lease cache: a pair
    costs a few µs instead of a turn each way (see :mod:`lessor.handles.cached`).
    """
    ref = PoolActor.start(spec, gate=gate)
    if cache:
        from lessor.handles.cached import CachedRoute  # (it builds on this module)

        return PoolHandle(CachedRoute(ref, spec))
    return PoolHandle(LocalRoute(ref, spec))
