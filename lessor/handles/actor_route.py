"""ActorRoute: how a handle in an actor's own process reaches that actor.

It follows a supervised child across restarts (the running incarnation is looked up
again when it changes) and sends lessor messages with the caller's identity in the
envelope. A request runs on the caller's thread when the actor is idle (see
:mod:`lessor.actors.base`). Pool handles build on it (:class:`LocalRoute`); so do
the handles of the other actor kinds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pykka

from lessor.actors.base import LessorActor, actor_of
from lessor.actors.reply import OneShot, Reply
from lessor.errors import ActorRestarted, ActorStopped, LessorError
from lessor.handles.ops import REQUEST_TIMEOUT
from lessor.holder import Holder, current_holder
from lessor.protocol.messages import Message
from lessor.supervisor.child import ChildRef, ChildState

__all__ = ["ActorRoute"]


class ActorRoute:
    """A running actor in this process, or its supervised child; safe to share.

    ``closed`` is the error class raised once the actor is gone for good (a pool's
    handle raises PoolClosed). It is also a target the runtime's node delivers
    workers' requests to.
    """

    closed: type[LessorError] = ActorStopped
    #: What the actor is, for errors: "pool", "breaker".
    kind = "actor"

    def __init__(
        self,
        target: pykka.ActorRef[Any] | ChildRef,
        name: str,
        holder: Callable[[], Holder] = current_holder,
    ) -> None:
        self._target = target
        #: The actor's ref, or its supervised child (whose incarnations change).
        self.target = target
        self.name = name
        self.label = f"{self.kind} {name!r}"
        self._holder = holder
        self._last_ref: pykka.ActorRef[Any] | None = None
        self._last_actor: LessorActor | None = None

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The current incarnation's ref (it changes when a supervised actor restarts)."""
        if isinstance(self._target, ChildRef):
            return self.current_ref(REQUEST_TIMEOUT)
        return self._target

    def current_ref(self, wait: float) -> pykka.ActorRef[Any]:
        """The running incarnation, waiting up to ``wait`` seconds through a restart."""
        target = self._target
        if not isinstance(target, ChildRef):
            if not target.is_alive():
                raise self.closed(f"{self.label} is not running")
            return target
        ref = target.ref  # fast path: running, no lock
        if target.state == ChildState.RUNNING and ref is not None and ref.is_alive():
            return ref
        try:
            return target.current(wait)  # waits through a restart
        except ActorRestarted:
            raise
        except ActorStopped as exc:
            raise self.closed(f"{self.label} is stopped") from exc

    def _actor(self, wait: float) -> LessorActor:
        """The running incarnation's actor; cached until the incarnation changes."""
        actor, target = self._last_actor, self._target
        if (
            actor is not None
            and actor.accepting
            and (not isinstance(target, ChildRef) or target.ref is self._last_ref)
        ):
            return actor
        ref = self.current_ref(wait)
        if ref is self._last_ref and self._last_actor is not None:
            return self._last_actor
        actor = actor_of(ref)
        if actor is None:
            raise self.closed(f"{self.label} is not running")
        self._last_ref, self._last_actor = ref, actor
        return actor

    def ask(
        self, message: Message, timeout: float | None = None, holder: Holder | None = None
    ) -> Any:
        """Send a request and wait for its answer; errors come back raised."""
        wait = REQUEST_TIMEOUT if timeout is None else timeout
        reply = OneShot()
        holder = holder or self._holder()
        self._actor(wait).deliver(message, reply, holder)
        try:
            return reply.get(wait)
        except TimeoutError:  # get() cancelled the reply: a later answer is refused
            raise self.closed(f"{self.label} did not answer in {wait:g}s") from None
        except LessorError:
            raise
        except BaseException:  # interrupted while waiting (KeyboardInterrupt): lose nothing
            self.cancel(reply, holder)
            raise

    def tell(self, message: Message) -> None:
        """Send without waiting for the answer; a refusal is logged by the actor."""
        self._actor(REQUEST_TIMEOUT).deliver(message, None, self._holder())

    def deliver(self, message: Message, reply: Reply | None, holder: Holder) -> None:
        """Hand a request from a worker process to the actor, without waiting."""
        self._actor(0.0).deliver(message, reply, holder)

    def deliver_internal(self, message: Any) -> bool:
        """Hand the running incarnation one of its own messages; False if none runs."""
        try:
            self._actor(0.0).deliver_internal(message)
        except LessorError:
            return False
        return True

    def cancel(self, reply: Any, holder: Holder) -> None:
        """The caller (here, or a worker) gave up waiting: if an answer came anyway,
        undo what it granted."""
        if reply.cancel():
            return
        with contextlib.suppress(Exception):
            self.undo(reply.result(), holder)

    def undo(self, answer: Any, holder: Holder) -> None:
        """Give back what ``answer`` granted ``holder``; most answers grant nothing."""
