"""Where an actor's answers go, and how a caller waits for one.

A :class:`Reply` is anything with ``set``/``set_exception``: a :class:`OneShot` for
an in-process caller, a wire reply for a worker, a pykka future for a plain ask.
``set`` says whether the answer was taken, so a grant nobody takes is never lost.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import Any, Protocol

__all__ = ["MAX_WAIT", "OneShot", "Reply", "answer", "answer_error", "clamp_wait"]

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


class OneShot:
    """A reply target a caller blocks on, lighter than a pykka future.

    ``set`` and ``cancel`` race for one claim (a list pop, atomic under the GIL), so
    exactly one of "answered" and "cancelled" happens: a caller whose wait timed out
    either cancels (and the actor's later grant is refused and released) or finds
    the answer that just arrived and uses it. The lock a caller sleeps on is made
    only if the answer is not there yet: a request the caller's own thread handled
    (see :mod:`lessor.actors.base`) is answered before anyone waits.
    """

    __slots__ = ("_claim", "_error", "_stored", "_value", "_wake")

    def __init__(self) -> None:
        self._claim = [True]
        self._wake: threading.Lock | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._stored = False

    def _stored_now(self) -> None:
        self._stored = True
        wake = self._wake  # read after the store: a waiter that missed it sees _stored
        if wake is not None:
            wake.release()

    def set(self, value: Any = None) -> bool:
        try:
            self._claim.pop()
        except IndexError:  # cancelled, or answered already
            return False
        self._value = value
        self._stored_now()
        return True

    def set_exception(self, exc_info: Any = None) -> bool:
        try:
            self._claim.pop()
        except IndexError:
            return False
        self._error = (exc_info or sys.exc_info())[1]
        self._stored_now()
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
        if not self._stored:
            wake = threading.Lock()
            wake.acquire()
            self._wake = wake
            if not self._stored:  # (set() may have stored before it saw the lock)
                wait = -1 if timeout is None else clamp_wait(timeout)
                if not wake.acquire(timeout=wait) and self.cancel():
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
