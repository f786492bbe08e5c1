"""RuntimeConnection: a worker process's request/reply link to its runtime's node.

One connection per process, shared by all its threads. Requests carry a
correlation id, so replies may come back in any order and a waiting Acquire never
holds up another thread's Release. Whichever thread reads takes every frame:
replies go to their waiting callers, pushes to ``on_push``. If the runtime goes
away, pending requests fail and ``on_lost`` is called.

A request the caller stops waiting for (its timeout, or any exception while it
waits, KeyboardInterrupt included) is cancelled with a CANCEL frame. A reply that
arrives for it anyway goes to ``on_unclaimed``: that is where a grant nobody will
read is given back. The connection itself knows nothing of pools.
"""

from __future__ import annotations

import itertools
import logging
import select
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from lessor.errors import ActorStopped, LessorError, ProtocolError
from lessor.protocol import wire
from lessor.protocol.messages import ErrorReply, Message
from lessor.protocol.wire import Kind
from lessor.transport.handshake import error_from_reply, open_connection
from lessor.transport.spin import SpinBudget

__all__ = ["IDLE_BEFORE_READING", "MAX_WAIT", "RuntimeConnection", "open_connection"]

log = logging.getLogger("lessor.transport.connection")

#: The longest single wait (a poll, a condition) a connection makes; longer waits loop.
MAX_WAIT = 86400.0
#: The background reader waits this long after the last request before it reads, so
#: that a thread asking in a loop reads its own replies (no thread hand-off).
IDLE_BEFORE_READING = 0.01


class _Waiter:
    """One pending request: answered by whichever thread reads its reply.

    The reader and an asker that gives up race for ``claim`` (a list pop, atomic
    under the GIL); the reader stores the answer before it claims, so an asker that
    loses finds the answer in ``value``/``error``.
    """

    __slots__ = ("claim", "done", "error", "on_answer", "request", "target", "value")

    def __init__(
        self,
        target: str,
        request: Message,
        on_answer: Callable[[Any, BaseException | None], None] | None = None,
    ) -> None:
        self.claim = [True]
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.target = target
        self.request = request
        self.on_answer = on_answer  # set: nobody waits; the reader calls it

    def call(self) -> None:
        """Hand the answer to ``on_answer`` (see :meth:`RuntimeConnection.ask_later`)."""
        try:
            self.on_answer(self.value, self.error)  # type: ignore[misc]
        except Exception:
            log.exception("connection: an answer handler failed")


class RuntimeConnection:
    """The connection of one worker process, safe to share between its threads.

    Reading is leader/follower: a thread waiting for a reply reads the connection
    itself when no other thread is, and hands the replies it reads for others to
    them. That saves a thread hand-off per request (tens of µs). When no request is
    under way, a background thread (started by :meth:`start`) reads pushes and
    notices a dead runtime.

    ``on_unclaimed(target, request, reply)`` gets each reply whose caller gave up
    first. ``on_push`` and ``on_unclaimed`` run on a reading thread; ``on_lost`` once.
    """

    def __init__(
        self,
        address: str,
        authkey: bytes,
        worker_id: str,
        on_push: Callable[[Message], None],
        on_lost: Callable[[], None],
        on_unclaimed: Callable[[str, Message, Message | None], None],
    ) -> None:
        self._conn = open_connection(address, authkey, worker_id)
        self._on_push = on_push
        self._on_lost = on_lost
        self._on_unclaimed = on_unclaimed
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._poller = select.poll()  # made once: conn.poll() builds a selector every call
        self._poller.register(self._conn.fileno(), select.POLLIN)
        self._spin = SpinBudget()
        self._cv = threading.Condition(threading.Lock())
        self._idle = threading.Condition(self._cv._lock)  # type: ignore[attr-defined]
        self._pending: dict[int, _Waiter] = {}
        self._cancelled: dict[int, _Waiter] = {}  # CANCEL sent: one more frame will come
        self._ids = itertools.count(1)
        self._active = 0  # threads inside ask()
        self._following = 0  # of those, waiting for another thread to read their reply
        self._last_active = time.monotonic()
        #: Frames sent since the handshake (a one-way Release costs one, a refused one none).
        self.frames_sent = 0
        self.closing = False
        self.lost = False
        self._reader = threading.Thread(target=self._background, name="lessor-client",
                                        daemon=True)  # fmt: skip

    def start(self) -> None:
        """Start the background reader (once the owner is ready for pushes)."""
        self._reader.start()

    # -- requests ----------------------------------------------------------------------

    def ask(
        self,
        target: str,
        message: Message,
        timeout: float,
        timeout_error: type[LessorError] = LessorError,
    ) -> Any:
        """Send ``message`` to ``target`` and wait up to ``timeout`` s for its answer."""
        if not timeout >= 0:
            raise ValueError(f"timeout must be a number >= 0, got {timeout!r}")
        corr = next(self._ids)
        data = wire.frame(Kind.ASK, corr, target, message)  # a bad message fails here, not later
        waiter = _Waiter(target, message)
        cv = self._cv
        with cv:
            if self.lost:
                raise ActorStopped("the runtime is gone")
            self._pending[corr] = waiter
            self._active += 1
        try:
            self.send(data)
            self._wait(waiter, time.monotonic() + timeout)
        except BaseException:  # interrupted while waiting (KeyboardInterrupt) or gone
            if not self._abandon(corr, waiter):
                self._unclaimed(waiter, waiter.value)  # answered just now: nobody takes it
            raise
        finally:
            with cv:  # the background reader notices on its own: waking it costs the caller
                self._active -= 1
                self._last_active = time.monotonic()
        if not waiter.done and self._abandon(corr, waiter):
            raise timeout_error(f"runtime did not answer in {timeout:g}s")
        if waiter.error is not None:  # (answered, possibly at the very last moment)
            raise waiter.error
        return waiter.value

    def ask_later(
        self,
        target: str,
        message: Message,
        on_answer: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Send a request nobody waits for (no timeout: the runtime answers it).
        ``on_answer(value, error)`` runs once, on the reading thread: keep it short."""
        corr = next(self._ids)
        data = wire.frame(Kind.ASK, corr, target, message)
        waiter = _Waiter(target, message, on_answer)
        with self._cv:
            if self.lost:
                raise ActorStopped("the runtime is gone")
            self._pending[corr] = waiter
        try:
            self.send(data)
        except BaseException:
            if self._pending.pop(corr, None) is not None:  # (else _lose answered it)
                raise

    def tell(self, target: str, message: Message) -> None:
        """Send ``message`` one way: nothing comes back for it."""
        self.send(wire.frame(Kind.TELL, 0, target, message))

    def send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self._conn.send_bytes(data)
            except (OSError, TypeError) as exc:
                raise ActorStopped("the runtime is gone") from exc
            self.frames_sent += 1

    def _wait(self, waiter: _Waiter, deadline: float) -> None:
        cv = self._cv
        while not waiter.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._read_lock.acquire(blocking=False):
                try:
                    self._lead(waiter, deadline)
                finally:
                    self._read_lock.release()
                    if self._following:
                        with cv:
                            cv.notify_all()  # a follower may take the lead now
            else:
                with cv:
                    if not waiter.done:
                        self._following += 1
                        try:
                            cv.wait(min(remaining, 0.05))
                        finally:
                            self._following -= 1

    def _abandon(self, corr: int, waiter: _Waiter) -> bool:
        """Stop waiting for ``corr``: True if no answer will be used, False if one came."""
        try:
            waiter.claim.pop()
        except IndexError:
            return False  # the reader took the answer first: it is in waiter.value/error
        self._cancelled[corr] = waiter  # before the pop: the reader looks here next
        if self._pending.pop(corr, None) is None:
            # The reader holds the answer (it will find the claim gone and pass it to
            # on_unclaimed), or the connection is lost: no CANCEL, no frame to wait for.
            self._cancelled.pop(corr, None)
            return True
        try:
            self.send(wire.frame(Kind.CANCEL, corr, waiter.target, None))
        except LessorError:
            self._cancelled.pop(corr, None)
        return True

    def _unclaimed(self, waiter: _Waiter, reply: Message | None) -> None:
        if waiter.error is None:
            try:
                self._on_unclaimed(waiter.target, waiter.request, reply)
            except Exception:
                log.exception("connection: handling an unclaimed reply failed")

    # -- reading -----------------------------------------------------------------------

    def _lead(self, waiter: _Waiter, deadline: float) -> None:
        """Read frames (holding the read lock) until ``waiter`` is answered or time is up.

        First spin briefly: on a VM, putting the thread to sleep and waking it when the
        reply lands costs more than the whole round trip (see :class:`SpinBudget`).
        """
        conn = self._conn
        budget = self._spin.budget
        if not budget:
            self._spin.skipped()
        else:
            poll, clock = self._poller.poll, time.perf_counter
            began = clock()
            end = began + budget
            while not waiter.done:
                if poll(0):
                    if not self._read_one(conn, None):
                        return
                elif clock() >= end:
                    break
            self._spin.observed(waiter.done, clock() - began)
        while not waiter.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read_one(conn, remaining):
                return

    def _read_one(self, conn: Connection, wait: float | None) -> bool:
        """Read one frame, waiting up to ``wait`` s (None: it is there); False if the link died."""
        try:  # poll takes whole ms in a C int: round up, at most MAX_WAIT
            ms = 0 if wait is None else max(1, int(min(wait, MAX_WAIT) * 1000) + 1)
            if ms and not self._poller.poll(ms):
                return True
            data = conn.recv_bytes(wire.MAX_FRAME)
        except (EOFError, OSError, TypeError):  # TypeError: closed under our feet
            self._lose()
            return False
        try:
            kind, corr, _, message = wire.parse(data)
        except wire.FrameError as exc:  # an answer we cannot read still ends its wait
            log.warning("connection: a malformed frame from the runtime", exc_info=True)
            if exc.kind in (Kind.REPLY, Kind.ERROR):
                self._answer(Kind.ERROR, exc.corr, None, exc)
            return True
        except ProtocolError:
            log.warning("connection: a malformed frame from the runtime", exc_info=True)
            return True
        if kind in (Kind.REPLY, Kind.ERROR):
            self._answer(kind, corr, message)
        elif kind == Kind.PUSH and message is not None:
            try:
                self._on_push(message)
            except Exception:
                log.exception("connection: a push handler failed")
        return True

    def _answer(
        self, kind: Kind, corr: int, message: Message | None, error: LessorError | None = None
    ) -> None:
        waiter = self._pending.pop(corr, None)
        if waiter is None:  # the last frame of a request its caller gave up on
            gone = self._cancelled.pop(corr, None)
            if gone is not None and kind == Kind.REPLY:
                self._unclaimed(gone, message)
            return
        if kind == Kind.ERROR:
            waiter.error = error or (error_from_reply(message) if isinstance(message, ErrorReply)
                                     else ProtocolError("a malformed error reply"))  # fmt: skip
        else:
            waiter.value = message
        try:
            waiter.claim.pop()
        except IndexError:  # its caller gave up at this very moment
            if kind == Kind.REPLY:
                self._unclaimed(waiter, message)
            return
        waiter.done = True
        if waiter.on_answer is not None:
            waiter.call()
            return
        if self._following:
            with self._cv:
                self._cv.notify_all()

    def read_pushes(self) -> None:
        """Read whatever has arrived, if no other thread is reading: it costs one poll.

        A worker busy in a loop of cached pairs asks nothing, so nobody else reads.
        """
        if self._read_lock.acquire(blocking=False):  # the poll object is the reader's
            try:
                while self._poller.poll(0) and self._read_one(self._conn, None):
                    pass
            finally:
                self._read_lock.release()
                if self._following:
                    with self._cv:
                        self._cv.notify_all()

    def _background(self) -> None:
        """Read while nobody is asking: pushes, and the runtime hanging up."""
        idle = self._idle
        while not self.closing and not self.lost:
            with idle:
                while not self.closing and (
                    self._active or time.monotonic() - self._last_active < IDLE_BEFORE_READING
                ):
                    idle.wait(IDLE_BEFORE_READING)
            if self.closing or not self._read_lock.acquire(timeout=0.05):
                continue
            try:
                if not self._active:
                    self._read_one(self._conn, IDLE_BEFORE_READING)
            finally:
                self._read_lock.release()
                if self._following:
                    with self._cv:
                        self._cv.notify_all()

    # -- the end -----------------------------------------------------------------------

    def _lose(self) -> None:
        with self._cv:
            if self.lost:
                return
            self.lost = True
            gone = ActorStopped("the runtime is gone")
            later: list[_Waiter] = []
            for waiter in self._pending.values():
                waiter.error = gone  # (before the claim: an asker that loses it reads this)
                try:
                    waiter.claim.pop()
                except IndexError:
                    continue
                waiter.done = True
                if waiter.on_answer is not None:
                    later.append(waiter)
            self._pending.clear()
            self._cancelled.clear()
            self._cv.notify_all()
            self._idle.notify_all()
        for waiter in later:
            waiter.call()
        if not self.closing:  # (the owner says so: it knows what happens next)
            self._on_lost()

    def close(self) -> None:
        """Hang up; pending requests fail with ActorStopped. Idempotent."""
        self.closing = True
        wire.hang_up(self._conn)
        with self._cv:
            self._cv.notify_all()
            self._idle.notify_all()
        if self._reader.is_alive() and threading.current_thread() is not self._reader:
            self._reader.join(5)
