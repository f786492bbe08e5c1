"""What every lessor actor shares: the turn, its mailbox, and deferred replies.

**Whoever holds the turn drains the mailbox (flat combining).** A request is put
in the actor's mailbox; the thread that put it then tries to take the turn. If the
actor is idle, that thread (an in-process caller, a node reader, a factory thread)
handles its own message and anything queued behind it, so a request costs no
thread hand-off. If another thread holds the turn, the request waits in the
mailbox and that thread handles it. Messages are still handled one at a time and
in order; pykka's own thread is just another drainer (lifecycle hooks, timer
wake-ups). A plain ``ActorRef.ask(Acquire(...))`` takes the same path.

**Decide under the turn, act outside it.** A turn only changes state and queues
*effects* (replies, pushes, factory submissions, log events); they are carried out
by the same thread once the turn is released, so no reply, socket send, factory
call or user callback runs while the actor is locked, and nothing re-enters it
synchronously. A grant its caller no longer takes (``Reply.set`` returns False)
comes back to the actor in a turn of its own, through :meth:`LessorActor.on_refused`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import pykka

from lessor.actors._pykka_compat import DivertingInbox, install_diverting_inbox
from lessor.actors.reply import Reply, answer, answer_error
from lessor.errors import ExpiredLease, LessorError, ProtocolError
from lessor.holder import ANONYMOUS, Holder
from lessor.protocol.messages import Lease, Message

__all__ = ["DEFERRED", "Call", "LessorActor", "actor_of", "after_turns", "holding_a_turn"]

log = logging.getLogger("lessor.actors")


class Call:
    """A lessor message as the actor sees it: what was asked, who asked, where to answer."""

    __slots__ = ("holder", "message", "reply", "sender")

    def __init__(self, message: Message, reply: Reply | None, holder: Holder) -> None:
        self.message = message
        self.reply = reply
        self.holder = holder
        self.sender = threading.get_ident()  # the thread that brought it (see ``here``)

    @property
    def here(self) -> bool:
        """Handled on the thread that sent it: effects of its turn run on that thread."""
        return self.sender == threading.get_ident()


class _Crash:
    """Carries an unexpected error from a drainer to the actor's thread, to fail it there."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Wake:
    """Asks pykka's thread to drain the mailbox (a drainer reached its share)."""


_WAKE = _Wake()

#: Returned by ``handle_call`` when the Call will be answered later.
DEFERRED: Any = object()

#: Messages one drainer handles before it leaves the rest to pykka's thread, so a
#: caller never works for others for long.
COMBINE_LIMIT = 64

# Effect kinds: (kind, a, b) tuples, cheaper than objects on the Acquire path.
_GRANT = 0  # a: reply, b: Lease; refused -> on_refused
_ANSWER = 1  # a: reply, b: value
_ERROR = 2  # a: reply, b: exception
_DO = 3  # a: callable, b: args

_actors: weakref.WeakValueDictionary[str, LessorActor] = weakref.WeakValueDictionary()


class _MainTurns:
    """The turns the main thread holds, and what waits for it to hold none.

    Python runs signal handlers on the main thread between any two bytecodes, so
    one can land while that thread holds an actor's turn (flat combining runs turns
    on callers' threads). A handler that then talks to actors (the runtime's, which
    shuts down) would wait on the very turn it interrupted; it defers itself with
    :func:`after_turns` instead. Only the main thread updates this (other threads
    never run signal handlers), so it costs them one comparison per turn.
    """

    __slots__ = ("deferred", "depth")

    def __init__(self) -> None:
        self.depth = 0
        self.deferred: list[Callable[[], object]] = []

    def run_deferred(self) -> None:
        work, self.deferred = self.deferred, []
        for fn in work:
            fn()


_MAIN = threading.main_thread().ident
_main_turns = _MainTurns()


def _after_fork() -> None:  # the forking thread is the child's main thread, holding nothing
    global _MAIN, _main_turns
    _MAIN, _main_turns = threading.get_ident(), _MainTurns()


os.register_at_fork(after_in_child=_after_fork)


def holding_a_turn() -> bool:
    """Whether this is the main thread inside an actor's turn (or waiting to take one)."""
    return threading.get_ident() == _MAIN and _main_turns.depth > 0


def after_turns(fn: Callable[[], object]) -> None:
    """Run ``fn`` once the main thread holds no actor's turn: now, if it holds none."""
    if holding_a_turn():
        _main_turns.deferred.append(fn)
    else:
        fn()


def actor_of(ref: pykka.ActorRef[Any]) -> LessorActor | None:
    """The running lessor actor behind ``ref``, or None once it is gone."""
    return _actors.get(ref.actor_urn)


class LessorActor(pykka.ThreadingActor):
    """Base actor: ``handle_call`` for lessor messages, ``handle_internal`` for the rest.

    A :class:`LessorError` is the caller's problem: it is answered (or logged, for a
    tell) and the actor carries on. Any other exception is a bug or a broken world:
    the caller is answered and the actor fails, for its supervisor to restart.

    Subclasses queue effects with :meth:`grant`, :meth:`reply`, :meth:`reply_error`
    and :meth:`later` during a turn; set ``ready = True`` at the end of their start
    turn (requests wait in the mailbox until then) and call :meth:`close_mailbox`
    in their last turn.
    """

    #: Daemon threads let interpreter exit reach the atexit hook that shuts lessor down.
    use_daemon_thread = True

    def __init__(self) -> None:
        super().__init__()
        inbox = cast(DivertingInbox, self.actor_inbox)
        inbox.stopped = self.actor_stopped
        inbox.wants = _is_message
        inbox.divert = self._deliver_anonymous
        self._mailbox: deque[Any] = deque()  # Calls and internal messages, in order
        self._turn_lock = threading.Lock()  # held by whichever thread runs a turn
        self._effects: list[tuple[int, Any, Any]] = []
        self.ready = False  # the start turn has run: requests may be handled
        self._crashed = False
        self._closed_with: LessorError | None = None  # every later request gets this
        self._own_thread = 0
        _actors[self.actor_urn] = self

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

    # -- delivering messages -----------------------------------------------------------

    def deliver(self, message: Message, reply: Reply | None, holder: Holder) -> None:
        """Hand the actor a request; handled now on this thread if the actor is idle.

        Otherwise it waits in the mailbox for the thread that holds the turn. The
        answer goes to ``reply`` either way; this never blocks on another turn.
        """
        if (
            not self._mailbox
            and self.ready
            and not self._crashed
            and self._take_turn(blocking=False)
        ):
            try:  # nothing queued ahead of it: skip the mailbox
                if self._closed_with is not None:
                    self.reply_error(reply, self._closed_with)
                else:
                    self._handle(Call(message, reply, holder))
            finally:
                self._end_turn()
            return
        self._mailbox.append(Call(message, reply, holder))
        if self.ready:
            self._drain()

    @property
    def accepting(self) -> bool:
        """Neither stopped nor failed: requests delivered now are handled."""
        return self._closed_with is None and not self._crashed

    def _deliver_anonymous(self, message: Message, reply: Reply | None) -> None:
        """A plain pykka ``ask``/``tell`` of a lessor message: no holder identity."""
        self.deliver(message, reply, ANONYMOUS)

    def deliver_internal(self, message: Any) -> None:
        """Hand the actor an internal message (a factory result) the same way."""
        self._mailbox.append(message)
        if self.ready:
            self._drain()

    def in_turn(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` as one turn (waiting for it), then carry out what it decided."""
        self._take_turn(blocking=True)
        try:
            return fn(*args)
        finally:
            self._end_turn()

    def close_mailbox(self, error: LessorError) -> None:
        """In the last turn: requests queued or delivered from now on are answered ``error``.

        Internal messages are still handled (a resource made for a closed pool is
        destroyed by its closed core).
        """
        self._closed_with = error
        self.ready = True  # late messages are answered (or destroyed) by whoever brings them
        for item in self._mailbox:
            if type(item) is Call:
                self.reply_error(item.reply, error)
        kept = [item for item in self._mailbox if type(item) is not Call]
        self._mailbox.clear()
        self._mailbox.extend(kept)

    def _drain(self) -> None:
        mailbox = self._mailbox
        budget = COMBINE_LIMIT
        while mailbox and not (self._crashed and self._closed_with is None):
            if not self._take_turn(blocking=False):
                return  # the thread holding the turn drains it (it checks again on release)
            try:
                while mailbox and budget:
                    budget -= 1
                    item = mailbox.popleft()
                    if self._closed_with is not None and type(item) is Call:
                        self.reply_error(item.reply, self._closed_with)
                    else:
                        self._handle(item)
                    if self._crashed:
                        break
            finally:
                self._end_turn(drain=False)
            if not budget and mailbox and threading.get_ident() != self._own_thread:
                self.actor_ref.tell(_WAKE)  # our share is done: pykka's thread takes the rest
                return
            if not budget:
                budget = COMBINE_LIMIT

    def _take_turn(self, blocking: bool) -> bool:
        if threading.get_ident() != _MAIN:
            return self._turn_lock.acquire(blocking)
        main = _main_turns
        main.depth += 1  # before the lock: a signal handler landing now waits for the turn
        if self._turn_lock.acquire(blocking):
            return True
        main.depth -= 1
        if main.deferred and not main.depth:
            main.run_deferred()
        return False

    def _end_turn(self, drain: bool = True) -> None:
        """Release the turn, then carry out what it decided (on this thread)."""
        effects: list[tuple[int, Any, Any]] | None = self._effects
        if effects:
            self._effects = []
        else:  # (the list stays the actor's: the next turn may fill it as soon as we release)
            effects = None
        self._turn_lock.release()
        on_main = threading.get_ident() == _MAIN
        if on_main:
            _main_turns.depth -= 1
        if effects:
            self._carry_out(effects)
        if drain and self._mailbox and self.ready:
            self._drain()
        if on_main and _main_turns.deferred and not _main_turns.depth:
            _main_turns.run_deferred()  # a signal handler that landed in the turn runs now

    def _handle(self, item: Any) -> None:
        """One message, in a turn; an unexpected error marks the actor crashed."""
        try:
            self._receive(item)
        except Exception as exc:
            self._crashed = True
            self.later(self._crash, exc)
        except BaseException as exc:  # interrupted mid-turn: the books may be half changed
            self._crashed = True  # so the actor fails, and its supervisor restarts it
            self.later(self._crash, RuntimeError(f"{type(exc).__name__} during a turn"))
            raise

    def _crash(self, exc: Exception) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_Crash(exc))  # fail on the actor's thread: on_failure runs

    def on_receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is _Wake:
            self._own_thread = threading.get_ident()
            self._drain()
            return None
        if kind is _Crash:
            raise message.error
        return self.in_turn(self._receive, message)

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


install_diverting_inbox(LessorActor)


def _is_message(message: Any) -> bool:
    return isinstance(message, Message)
