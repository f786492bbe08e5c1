"""What every lessor actor shares: the turn, deferred replies, and holder identity.

pykka answers an ask with whatever ``on_receive`` returns, so an actor could only
answer an Acquire by blocking until a resource is free. lessor's inbox instead
hands the actor each lessor message as a :class:`Call` that carries its reply
target and holder: the actor answers now, or keeps the Call and answers when the
pool decides. Plain ``ActorRef.ask(Acquire(...))`` works the same way.

**Decide under the turn, act outside it.** A turn (one message, on whichever
thread runs it) only changes state and queues *effects*: replies, pushes, factory
submissions, log events. They are carried out by the same thread once the turn is
released, so no reply, socket send, factory call or user callback ever runs while
the actor is locked, and nothing can re-enter it synchronously (psycopg_pool's
rule for ``getconn``). A grant its caller no longer takes (``Reply.set`` returns
False: the caller gave up, or its worker died) comes back to the actor in a turn
of its own, through :meth:`LessorActor.on_refused`.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import pykka

from lessor.actors._pykka_compat import is_stop
from lessor.errors import ActorStopped, ExpiredLease, LessorError, PoolClosed, ProtocolError
from lessor.holder import ANONYMOUS
from lessor.protocol.messages import Lease, Message

__all__ = [
    "DEFERRED",
    "Call",
    "LessorActor",
    "OneShot",
    "Reply",
    "answer",
    "answer_error",
    "clamp_wait",
    "post",
]

log = logging.getLogger("lessor.actors")

#: The longest single wait handed to a lock or poll (longer ones overflow there).
MAX_WAIT = min(threading.TIMEOUT_MAX, 86_400.0)


def clamp_wait(timeout: float) -> float:
    """A wait that every blocking primitive accepts: 0 <= t <= MAX_WAIT seconds."""
    return min(max(timeout, 0.0), MAX_WAIT)


class Reply(Protocol):
    """Where an answer goes: a :class:`OneShot` in-process, a wire reply across processes.

    ``set`` returns whether the answer was taken: False once the caller cancelled or
    is gone, so a grant is never lost and never handed to nobody.
    """

    def set(self, value: Any = None) -> bool | None: ...

    def set_exception(self, exc_info: Any = None) -> bool | None: ...


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

    ``set`` and ``cancel`` race for one claim (a list pop, atomic under the GIL), so
    exactly one of "answered" and "cancelled" happens: a caller whose wait timed out
    either cancels (and the actor's later grant is refused and released) or finds
    the answer that just arrived and uses it.
    """

    __slots__ = ("_claim", "_done", "_error", "_stored", "_value")

    def __init__(self) -> None:
        self._claim = [True]
        self._done = threading.Lock()
        self._done.acquire()
        self._value: Any = None
        self._error: BaseException | None = None
        self._stored = False

    def set(self, value: Any = None) -> bool:
        try:
            self._claim.pop()
        except IndexError:  # cancelled, or answered already
            return False
        self._value = value
        self._stored = True
        self._done.release()
        return True

    def set_exception(self, exc_info: Any = None) -> bool:
        try:
            self._claim.pop()
        except IndexError:
            return False
        self._error = (exc_info or sys.exc_info())[1]
        self._stored = True
        self._done.release()
        return True

    def cancel(self) -> bool:
        """Give up on the answer; False if it was already given (then ``get`` returns it)."""
        try:
            self._claim.pop()
        except IndexError:
            return False
        return True

    def get(self, timeout: float | None = None) -> Any:
        """The answer; raises it if it is an error, or TimeoutError if none came in time.

        On TimeoutError the reply is cancelled: an answer can no longer be taken.
        """
        done = self._done
        if done.acquire(timeout=-1 if timeout is None else clamp_wait(timeout)):
            done.release()  # (never needed again: an interrupt right here loses nothing)
        elif self.cancel():
            raise TimeoutError
        return self.result()

    def result(self) -> Any:
        """The answer, once ``set`` has won the claim (``cancel`` returned False)."""
        while not self._stored:  # set() is between its claim and its store: a moment
            time.sleep(0)
        if self._error is not None:
            raise self._error
        return self._value


def answer(reply: Reply | None, value: Any) -> bool:
    """Hand ``value`` to ``reply``; whether it was taken (never raises)."""
    if reply is None:
        return True
    try:
        return reply.set(value) is not False
    except queue.Full:  # a pykka future answered already
        return False
    except Exception:
        log.exception("a reply target failed to take its answer")
        return False


def answer_error(reply: Reply | None, exc: BaseException) -> bool:
    if reply is None:
        return True
    try:
        return reply.set_exception(exc_info=(type(exc), exc, exc.__traceback__)) is not False
    except queue.Full:
        return False
    except Exception:
        log.exception("a reply target failed to take its error")
        return False


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

# Effect kinds: (kind, a, b) tuples, cheaper than objects on the Acquire path.
_GRANT = 0  # a: reply, b: Lease; refused -> on_refused
_ANSWER = 1  # a: reply, b: value
_ERROR = 2  # a: reply, b: exception
_DO = 3  # a: callable, b: args


class LessorActor(pykka.ThreadingActor):
    """Base actor: ``handle_call`` for lessor messages, ``handle_internal`` for the rest.

    A :class:`LessorError` is the caller's problem: it is answered (or logged, for a
    tell) and the actor carries on. Any other exception is a bug or a broken world:
    the caller is answered and the actor fails, for its supervisor to restart.

    Subclasses queue effects with :meth:`grant`, :meth:`reply`, :meth:`reply_error`
    and :meth:`later` during a turn; :meth:`in_turn` runs a function as a turn and
    then carries its effects out.
    """

    #: Daemon threads let interpreter exit reach the atexit hook that shuts lessor down.
    use_daemon_thread = True

    def __init__(self) -> None:
        super().__init__()
        inbox: Any = self.actor_inbox
        inbox._stopped = self.actor_stopped
        inbox.owner = weakref.ref(self)
        self._turn = threading.Lock()  # one message at a time, whichever thread runs it
        self._effects: list[tuple[int, Any, Any]] = []
        self._ready = False  # on_start has finished: callers may run turns themselves

    @staticmethod
    def _create_actor_inbox() -> Any:  # pykka's hook for the inbox class
        return _CallInbox()

    # -- effects, queued during a turn -------------------------------------------------

    def grant(self, reply: Reply | None, lease: Lease) -> None:
        self._effects.append((_GRANT, reply, lease))

    def reply(self, reply: Reply | None, value: Any) -> None:
        if reply is not None:
            self._effects.append((_ANSWER, reply, value))

    def reply_error(self, reply: Reply | None, exc: BaseException) -> None:
        if reply is not None:
            self._effects.append((_ERROR, reply, exc))

    def later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once the turn is released (sends, factory work, callbacks)."""
        self._effects.append((_DO, fn, args))

    def on_refused(self, leases: list[Lease]) -> None:
        """In a turn: grants whose callers were gone. Subclasses that grant take them back."""

    # -- turns -------------------------------------------------------------------------

    def in_turn(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` as one turn, then carry out what it decided."""
        self._turn.acquire()
        try:
            return fn(*args)
        finally:
            self._end_turn()

    def _end_turn(self) -> None:
        """Release the turn, then carry out what it decided (on this thread)."""
        effects = self._effects
        if effects:
            self._effects = []
        self._turn.release()
        if effects:
            self._carry_out(effects)

    def on_receive(self, message: Any) -> Any:
        self._turn.acquire()  # in_turn, inlined: every in-process request comes here
        try:
            return self._receive(message)
        finally:
            self._end_turn()

    def call_now(self, message: Message, reply: Reply | None, holder: str) -> None:
        """Handle a request on the calling thread, in turn with the actor's own messages.

        The runtime's node uses this so a worker's request costs no thread hand-off:
        the pool's state is still touched by one thread at a time. Before the actor
        has started, the request queues like any other. An unexpected error fails the
        actor exactly as it would on the actor's own thread.
        """
        if not self._ready:
            if self.actor_stopped.is_set():
                raise ActorStopped(f"{self} stopped")
            post(self.actor_ref, message, reply, holder)
            return
        self._turn.acquire()  # in_turn, inlined: this is every worker request's path
        try:
            if self.actor_stopped.is_set():
                raise ActorStopped(f"{self} stopped")
            try:
                self._receive(Call(message, reply, holder))
            except Exception as exc:
                self.actor_ref.tell(_Crash(exc))
        finally:
            self._end_turn()

    def _carry_out(self, effects: list[tuple[int, Any, Any]]) -> None:
        """Runs once the turn that queued ``effects`` is released (see ``in_turn``)."""
        refused: list[Lease] = []
        for kind, a, b in effects:
            if kind == _GRANT:
                if not answer(a, b):
                    refused.append(b)
            elif kind == _ANSWER:
                answer(a, b)
            elif kind == _ERROR:
                answer_error(a, b)
            else:
                try:
                    a(*b)
                except Exception:
                    log.exception("%s: an action after a turn failed", self)
        if refused:
            self.in_turn(self.on_refused, refused)

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
            self.reply_error(message.reply, exc)
            return None
        except Exception as exc:
            self.reply_error(message.reply, exc)
            raise
        if result is not DEFERRED:
            self.reply(message.reply, result)
        return None

    def handle_call(self, call: Call) -> Any:
        raise ProtocolError(f"{type(self).__name__} does not handle {type(call.message).__name__}")

    def handle_internal(self, message: Any) -> Any:
        log.warning("%s: unexpected message %r", self, message)
        return None

    def drain_inbox(self, on_tell: Callable[[Any], None] | None = None) -> None:
        """After stopping, answer queued asks with PoolClosed and show tells to ``on_tell``.

        Called outside any turn; ``on_tell`` runs its own.
        """
        inbox = self.actor_inbox
        while not inbox.empty():
            envelope = inbox.get()
            if is_stop(envelope.message):
                answer(envelope.reply_to, None)  # what pykka's own teardown answers
            elif envelope.reply_to is not None:
                answer_error(envelope.reply_to, PoolClosed(f"{self} stopped"))
            elif on_tell is not None:
                on_tell(envelope.message)
