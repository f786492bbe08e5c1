"""The one place lessor touches pykka internals, pinned to the versions it was checked on.

pykka's public API answers an ask with whatever ``on_receive`` returns, on the
actor's thread, at once. Two things lessor needs have no public name:

- an ask answered *later* (an Acquire that waits for a release): the inbox hook
  below hands a lessor message and its reply target to the actor as it is sent,
  so pykka does not answer it too;
- the message ``ActorRef.stop`` enqueues, which an inbox drained after stopping
  must recognise to answer as pykka would.

``tests/actors/test_actor_turn.py`` checks both against the installed pykka.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from pykka.messages import _ActorStop

__all__ = [
    "PYKKA_VERSION",
    "SUPPORTED",
    "DivertingInbox",
    "answer_waiting",
    "install_diverting_inbox",
    "is_stop",
]

#: pykka major versions whose internals below were checked.
SUPPORTED = (4,)

PYKKA_VERSION = version("pykka")
if int(PYKKA_VERSION.split(".")[0]) not in SUPPORTED:  # pragma: no cover
    raise ImportError(f"lessor supports pykka {SUPPORTED}, found {PYKKA_VERSION}")


def is_stop(message: object) -> bool:
    """Whether ``message`` is the one ``ActorRef.stop`` put in an actor's inbox."""
    return isinstance(message, _ActorStop)


class DivertingInbox(queue.SimpleQueue):  # type: ignore[type-arg]
    """An actor inbox that hands some messages to the actor as they are sent.

    ``ActorRef.tell``/``ask`` put an envelope here on the sender's thread. Messages
    that ``wants(message)`` picks go to ``divert(message, reply_to)`` instead, with
    the ask's reply target, which the actor answers when it decides (now or after a
    release); pykka never sees them, so it answers nothing itself. They keep their
    order with the sender's other requests. Once the actor has stopped, envelopes
    go in untouched and pykka's teardown answers them with ActorDeadError.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stopped = threading.Event()  # the actor's own actor_stopped, once bound
        self.wants: Callable[[Any], bool] = lambda _message: False
        self.divert: Callable[[Any, Any], None] = lambda _message, _reply: None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not self.stopped.is_set() and self.wants(item.message):
            self.divert(item.message, item.reply_to)
        else:
            super().put(item, block, timeout)


def install_diverting_inbox(actor_class: type[Any]) -> None:
    """Make ``actor_class`` (a pykka ThreadingActor) build a DivertingInbox."""
    actor_class._create_actor_inbox = staticmethod(DivertingInbox)


def answer_waiting(inbox: Any, error: BaseException) -> None:
    """Answer every ask still in a stopping actor's inbox: ``error``, or None for a stop.

    pykka's own teardown would answer them ActorDeadError, which cannot say
    "restarting, ask again".
    """
    while not inbox.empty():
        envelope = inbox.get()
        reply = envelope.reply_to
        if reply is None:
            continue
        if is_stop(envelope.message):
            reply.set(None)
        else:
            reply.set_exception(exc_info=(type(error), error, None))
