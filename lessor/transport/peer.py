"""One worker connection as the node sees it, and the reply target of its requests.

See :class:`WireReply` for the reply contract a target relies on.
"""

from __future__ import annotations

import contextlib
import logging
import select
import sys
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from lessor import errors
from lessor.errors import LessorError, ProtocolError
from lessor.holder import Holder
from lessor.protocol import wire
from lessor.protocol.messages import ErrorReply, Message
from lessor.protocol.wire import Kind

if TYPE_CHECKING:
    from lessor.transport.node import Target

__all__ = ["Peer", "WireReply"]

log = logging.getLogger("lessor.transport.node")


def _error_name(exc: BaseException) -> str:
    """The lessor.errors class a worker should raise for ``exc`` (its nearest public base)."""
    for cls in type(exc).__mro__:
        name: str = cls.__name__
        if getattr(errors, name, None) is cls and issubclass(cls, LessorError):
            return name
    return "LessorError"


def _writable(fd: int, wait: float = 0.0) -> bool:
    """Whether a send to ``fd`` would not block, waiting up to ``wait`` seconds.

    A poll object of its own per call: pool threads push concurrently, and one
    ``select.poll`` object raises "concurrent poll() invocation" when shared.
    """
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(int(wait * 1000)))


class Peer:
    """One authenticated worker connection. ``send`` is safe from any thread."""

    def __init__(self, conn: Connection, worker_id: str, pid: int) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.pid = pid
        self.holder = Holder.worker(worker_id, pid)
        self.pending: dict[int, WireReply] = {}
        self.closed = False
        self.dropped_pushes = 0
        self._lock = threading.Lock()
        self._lock.acquire()  # released by greet(): nothing goes out before the HELLO
        self._fd = conn.fileno()

    def greet(self, hello: bytes) -> None:
        """Send the node's HELLO, the first frame, and open the peer to other senders."""
        try:
            self.conn.send_bytes(hello)
        except OSError:
            self.closed = True
        finally:
            self._lock.release()

    def send(self, data: bytes) -> bool:
        with self._lock:
            if self.closed:
                return False
            try:
                self.conn.send_bytes(data)
            except OSError:
                self.closed = True
                return False
        return True

    def tell(self, message: Message, wait: float = 0.0) -> None:
        """Push a message the worker did not ask for (LeaseExpired, Drain, GiveBack).

        Pushes are hints, sent from pool threads: to a worker that stopped reading
        (its socket buffer full for ``wait`` seconds) one is dropped rather than
        block the pool.
        """
        if self.closed:
            return
        if not _writable(self._fd, wait):  # unlocked: a blocked send must not stall us
            self.dropped_pushes += 1
            log.warning("node: %s is not reading; dropped a %s push", self.holder,
                        type(message).__name__)  # fmt: skip
            return
        self.send(wire.frame(Kind.PUSH, 0, "", message))

    def error(self, corr: int, exc: BaseException) -> bool:
        return self.send(wire.frame(Kind.ERROR, corr, "", ErrorReply(_error_name(exc), str(exc))))

    def close(self) -> None:
        """Called once, by the connection's reader thread, as it ends."""
        wire.shut(self.conn)  # a send blocked under the lock fails now
        with self._lock:
            self.closed = True
            with contextlib.suppress(OSError):
                self.conn.close()


class WireReply:
    """The reply target of one remote ask: the answer travels back as a frame.

    It never calls back into a target (a pool may call ``set`` from any thread). ``set``,
    ``set_exception`` and ``cancel`` race for one claim (a list pop, atomic under the
    GIL); whichever wins decides:

    * ``set(value)`` is True if the answer was taken: the frame went out, or the
      worker gave up while it was being made (then the node's CANCEL hands the reply
      to ``target.cancel``, whose ``reply.cancel()`` returns False and reads
      ``value``). False if the worker is gone, the request was cancelled, it was
      answered already, or the value cannot be encoded (then the worker gets an
      ERROR for this request instead): the caller keeps what it offered.
    * ``cancel()`` is True if no answer had been given: any later ``set`` is False.
      False if an answer won; ``value`` (stored before the claim) holds it.
    """

    __slots__ = ("_claim", "corr", "peer", "target", "value")

    def __init__(self, peer: Peer, corr: int, target: Target) -> None:
        self.peer = peer
        self.corr = corr
        self.target = target
        self.value: Any = None
        self._claim = [True]

    def set(self, value: Any = None) -> bool:
        if not self._claim:
            return False  # (cheap: a set that lost does not overwrite the winner's value)
        self.value = value
        try:
            self._claim.pop()
        except IndexError:
            return False
        if self.peer.pending.pop(self.corr, None) is None:
            return True  # the worker's CANCEL took the request: target.cancel gives this back
        try:
            data = wire.frame(
                Kind.REPLY, self.corr, "", value if isinstance(value, Message) else None
            )
        except ProtocolError as exc:
            self.peer.error(self.corr, exc)
            return False
        return self.peer.send(data)

    def set_exception(self, exc_info: Any = None) -> bool:
        try:
            self._claim.pop()
        except IndexError:
            return False
        if self.peer.pending.pop(self.corr, None) is None:
            return True
        exc = (exc_info or sys.exc_info())[1]
        if not isinstance(exc, BaseException):
            exc = LessorError("the request failed")
        return self.peer.error(self.corr, exc)

    def cancel(self) -> bool:
        try:
            self._claim.pop()
        except IndexError:
            return False
        if self.peer.pending.pop(self.corr, None) is not None:  # not the worker's CANCEL
            self.peer.error(self.corr, LessorError("the runtime cancelled this request"))
        return True

    def result(self) -> Any:
        """What was answered, once ``cancel()`` returned False (it was stored first)."""
        return self.value
