"""What every lessor actor shares: deferred replies and holder identity.

pykka answers an ask with whatever ``on_receive`` returns, so an actor could only
answer an Acquire by blocking until a resource is free. lessor's inbox instead
hands the actor each lessor message as a :class:`Call` that carries its reply
target and holder: the actor answers now, or keeps the Call and answers when the
pool decides. Plain ``ActorRef.ask(Acquire(...))`` works the same way.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import pykka
from pykka.messages import _ActorStop

from lessor.errors import ActorStopped, ExpiredLease, LessorError, PoolClosed, ProtocolError
from lessor.holder import ANONYMOUS
from lessor.messages import Message

__all__ = [
    "DEFERRED",
    "Call",
    "LessorActor",
    "OneShot",
    "Reply",
    "answer",
    "answer_error",
    "post",
]

log = logging.getLogger("lessor.actors")


class Reply(Protocol):
    """Where an answer goes: a pykka future in-process, a wire reply across processes."""

    def set(self, value: Any = None) -> None: ...

    def set_exception(self, exc_info: Any = None) -> None: ...


class Call:
    """A lessor message as the actor sees it: what was asked, who asked, where to answer."""

    __slots__ = ("holder", "message", "reply")

    def __init__(self, message: Message, reply: Reply | None, holder: str) -> None:
        self.message = message
        self.reply = reply
        self.holder = holder


class _Plain:
    """An envelope whose reply the actor owns; pykka sees no reply_to and sends none."""

    __slots__ = ("message", "reply_to")

    def __init__(self, message: Any, reply_to: Reply | None = None) -> None:
        self.message = message
        self.reply_to = reply_to


def post(ref: Any, message: Message, reply: Reply | None, holder: str) -> None:
    """Put a request in an actor's inbox with its holder and reply target (no wrapping later)."""
    ref.actor_inbox.put(_Plain(Call(message, reply, holder)))


class OneShot:
    """A reply target a caller blocks on: a lock released once, lighter than a pykka future.

    (A pykka future builds a Condition per request and a waiter lock per wait; on the
    Acquire path that is a measurable share of a pair.)
    """

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any = None) -> None:
        if not self._done.locked():
            raise queue.Full
        self._value = value
        self._done.release()

    def set_exception(self, exc_info: Any = None) -> None:
        if not self._done.locked():
            raise queue.Full
        self._error = (exc_info or sys.exc_info())[1]
        self._done.release()

    def get(self, timeout: float | None = None) -> Any:
        """The answer; raises it if it is an error, or TimeoutError if none came in time."""
        if not self._done.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            raise TimeoutError
        self._done.release()  # stays readable (a cancel may read a late grant)
        if self._error is not None:
            raise self._error
        return self._value


class _CallInbox(queue.SimpleQueue):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__()
        self._stopped = threading.Event()  # replaced by the actor's own stop event
        self.owner: Callable[[], LessorActor | None] = lambda: None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        envelope = super().get(block, timeout)
        message = envelope.message
        if self._stopped.is_set():
            # pykka's teardown must see the real reply_to to answer ActorDeadError.
            if type(message) is Call:
                return _Plain(message.message, message.reply)
            return envelope
        if type(message) is not Call and isinstance(message, Message):  # a plain pykka ask
            return _Plain(Call(message, envelope.reply_to, ANONYMOUS))
        return envelope


class _Crash:
    """Carries an error raised by ``call_now`` to the actor's thread, to fail it there."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


#: Returned by ``handle_call`` when the Call will be answered later.
DEFERRED: Any = object()


def answer(reply: Reply | None, value: Any) -> None:
    if reply is not None:
        try:  # noqa: SIM105 - not contextlib.suppress: this is on every Acquire's path
            reply.set(value)
        except queue.Full:  # answered already (the caller cancelled)
            pass


def answer_error(reply: Reply | None, exc: BaseException) -> None:
    if reply is not None:
        with contextlib.suppress(queue.Full):
            reply.set_exception(exc_info=(type(exc), exc, exc.__traceback__))


class LessorActor(pykka.ThreadingActor):
    """Base actor: ``handle_call`` for lessor messages, ``handle_internal`` for the rest.

    A :class:`LessorError` is the caller's problem: it is answered (or logged, for a
    tell) and the actor carries on. Any other exception is a bug or a broken world:
    the caller is answered and the actor fails, for its supervisor to restart.
    """

    #: Daemon threads let interpreter exit reach the atexit hook that shuts lessor down.
    use_daemon_thread = True

    def __init__(self) -> None:
        super().__init__()
        inbox: Any = self.actor_inbox
        inbox._stopped = self.actor_stopped
        inbox.owner = weakref.ref(self)
        self._turn = threading.Lock()  # one message at a time, whichever thread runs it

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _CallInbox()

    def on_receive(self, message: Any) -> Any:
        with self._turn:
            return self._receive(message)

    def call_now(self, message: Message, reply: Reply | None, holder: str) -> None:
        """Handle a request on the calling thread, in turn with the actor's own messages.

        The runtime's node uses this so a worker's request costs no thread hand-off:
        the pool's state is still touched by one thread at a time. An unexpected
        error fails the actor exactly as it would on the actor's own thread.
        """
        with self._turn:
            if self.actor_stopped.is_set():
                raise ActorStopped(f"{self} stopped")
            try:
                self._receive(Call(message, reply, holder))
            except Exception as exc:
                self.actor_ref.tell(_Crash(exc))

    def _receive(self, message: Any) -> Any:
        if type(message) is not Call:
            if type(message) is _Crash:
                raise message.error
            return self.handle_internal(message)
        try:
            result = self.handle_call(message)
        except LessorError as exc:
            if message.reply is None:
                log.log(
                    logging.INFO if isinstance(exc, ExpiredLease) else logging.WARNING,
                    "%s: %s from %s: %s",
                    self,
                    type(message.message).__name__,
                    message.holder,
                    exc,
                )
            answer_error(message.reply, exc)
            return None
        except Exception as exc:
            answer_error(message.reply, exc)
            raise
        if result is not DEFERRED:
            answer(message.reply, result)
        return None

    def handle_call(self, call: Call) -> Any:
        raise ProtocolError(f"{type(self).__name__} does not handle {type(call.message).__name__}")

    def handle_internal(self, message: Any) -> Any:
        log.warning("%s: unexpected message %r", self, message)
        return None

    def drain_inbox(self, on_tell: Callable[[Any], None] | None = None) -> None:
        """After stopping, answer queued asks with PoolClosed and show tells to ``on_tell``."""
        inbox = self.actor_inbox
        while not inbox.empty():
            envelope = inbox.get()
            if isinstance(envelope.message, _ActorStop):
                answer(envelope.reply_to, None)  # what pykka's own teardown answers
            elif envelope.reply_to is not None:
                answer_error(envelope.reply_to, PoolClosed(f"{self} stopped"))
            elif on_tell is not None:
                on_tell(envelope.message)
