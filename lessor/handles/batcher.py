"""Batcher: the one handle callers use for a batch processor, in-process and in workers.

``submit(item)`` returns a :class:`concurrent.futures.Future` of the item's result
(or its error); ``submit_many`` hands in many at once; ``put`` is fire and forget
(its errors are counted, and logged). In-process each call reaches the actor at
once. In a worker, items are gathered into frames of up to ``frame_items`` items
(or 512 KiB), sent at least every ``send_interval`` seconds, so an item costs no
round trip of its own; items sent together share the shortest of their timeouts.

**Backpressure.** A handle keeps at most ``max_pending`` of its items without an
outcome; past that a submit waits for room, and raises Backpressure once its
timeout has passed. The batcher then admits items into its queue up to
``max_pending``; an item that found no room there before its timeout fails with
Backpressure too. Memory stays bounded however fast the producers are.

Futures are resolved (and their callbacks run) in-process on the thread that
carried out the batcher's decision, and in a worker on its scheduler's thread,
never on the thread that reads the connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, Protocol, cast

from lessor import errors
from lessor.actors.reply import clamp_wait
from lessor.actors.scheduler import process_scheduler
from lessor.errors import ActorRestarted, Backpressure, BatchItemFailed, LessorError
from lessor.holder import Holder
from lessor.protocol.codec import pack
from lessor.protocol.messages import BatcherStats, FlushBatcher, GetStats, Message, Results, Submit
from lessor.specs.batch import BatchLimits

__all__ = ["BatchRoute", "Batcher", "remote_error"]

log = logging.getLogger("lessor.batch")

#: A worker's frame is sent once its items take this many bytes (the limit is 1 MiB).
FRAME_BYTES = 512 * 1024
#: How long a submit that met a restarting batcher waits before it is sent again (s).
RESEND_DELAY = 0.01
#: ... and for how long in all, before its items fail with ActorRestarted (s).
RESEND_FOR = 30.0


class BatchRoute(Protocol):
    """How a handle reaches its batcher's actor (in this process, or over the socket)."""

    def send(self, message: Message, pending: _Pending, wait: float) -> None:
        """Deliver without waiting for the answer; it comes to ``pending``."""

    def ask(
        self, message: Message, timeout: float | None = None, holder: Holder | None = None
    ) -> Any: ...


class _Pending:
    """One Submit (or FlushBatcher) on its way: where its answer goes."""

    __slots__ = ("claim", "futures", "handle", "message", "resend_until", "seq")

    def __init__(self, handle: Batcher, message: Message, futures: list[Future[Any] | None]):
        self.handle = handle
        self.message = message
        self.futures = futures
        self.seq = 0
        self.resend_until = 0.0
        self.claim = [True]  # resolved once: the first answer wins (a list pop is atomic)

    # the Reply protocol (in-process), and ask_later's answer (workers)
    def set(self, value: Any = None) -> bool:
        self.handle._answered(self, value, None)
        return True

    def set_exception(self, exc_info: Any = None) -> bool:
        self.handle._answered(self, None, (exc_info or sys.exc_info())[1])
        return True

    def answered(self, value: Any, error: BaseException | None) -> None:
        self.handle._answered(self, value, error)


class _Buffer:
    """A worker's items not sent yet (one for submits, one for puts)."""

    __slots__ = ("bytes", "deadline", "futures", "items")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.futures: list[Future[Any] | None] = []
        self.bytes = 0
        self.deadline = float("inf")


def remote_error(entry: list[Any]) -> BaseException:
    """An item's error as a worker is told it: ``[index, type, text]``."""
    kind, text = str(entry[1]), str(entry[2])
    if kind.startswith("lessor."):
        cls = getattr(errors, kind[7:], None)
        if isinstance(cls, type) and issubclass(cls, LessorError):
            return cls(text)
    return BatchItemFailed(f"{kind}: {text}", kind)


class Batcher:
    """A batch processor shared by every process. Thread-safe; one per process and name.

    Made by ``runtime.add_batcher(spec)`` / ``runtime.batcher(name)`` in-process and by
    ``lessor.connect().batcher(name)`` in a worker.
    """

    def __init__(self, limits: BatchLimits, route: BatchRoute, *, in_process: bool) -> None:
        self.name = limits.name
        self.limits = limits
        self._route = route
        self._in_process = in_process
        self._cond = threading.Condition(threading.Lock())  # room, open submits, buffers
        self._outstanding = 0  # this handle's items without an outcome (or unsent)
        self._open: dict[int, int] = {}  # seq -> items, of submits not answered yet
        self._seq = 0
        self._buffers = {True: _Buffer(), False: _Buffer()}  # results wanted: submit, put
        self._answers: deque[tuple[_Pending, Any, BaseException | None]] = deque()
        self._retry: list[_Pending] = []  # submits a restarting batcher refused
        scheduler = process_scheduler()
        self._resolving = scheduler.timer(self._resolve_answers)
        self._sending = None if in_process else scheduler.timer(self._send_due)
        self.put_errors = 0

    # -- handing items in --------------------------------------------------------------

    def submit(self, item: Any, timeout: float | None = None) -> Future[Any]:
        """Hand in one item; its Future gets the processor's result for it, or its error.

        Waits while this handle has ``max_pending`` items without outcomes; raises
        Backpressure if still so after ``timeout`` seconds (default the spec's
        ``submit_timeout``). In a worker, an item that cannot be encoded raises
        ProtocolError here and nothing is sent.
        """
        future: Future[Any] = Future()
        if self._in_process:
            self._hand_in([item], [future], timeout, True)
            return future
        wait = self._wait(timeout)  # a worker's: the common case, without the lists
        size = self._size(0, item)
        deadline = time.monotonic() + wait
        self._take_room(1, deadline)
        try:
            self._buffer(item, future, size, deadline, True)
        except BaseException:
            self._settled(1)
            raise
        return future

    def submit_many(self, items: Iterable[Any], timeout: float | None = None) -> list[Future[Any]]:
        """Hand in many items at once (all or none: a bad one raises before any is sent)."""
        batch = list(items)
        futures: list[Future[Any]] = [Future() for _ in batch]
        self._hand_in(batch, cast(list[Future[Any] | None], futures), timeout, True)
        return futures

    def put(self, item: Any, timeout: float | None = None) -> None:
        """Hand in one item and forget it: its error, if any, is counted and logged."""
        self._hand_in([item], [None], timeout, False)

    def _hand_in(
        self, items: list[Any], futures: list[Future[Any] | None], timeout: float | None,
        results: bool,
    ) -> None:  # fmt: skip
        if not items:
            return
        wait = self._wait(timeout)
        sizes = None if self._in_process else [self._size(i, x) for i, x in enumerate(items)]
        deadline = time.monotonic() + wait
        self._take_room(len(items), deadline)
        if self._in_process:
            message = Submit(self.name, items, max(deadline - time.monotonic(), 1e-3), results)
            self._send(_Pending(self, message, futures), wait)
            return
        assert sizes is not None
        for at, (item, future, size) in enumerate(zip(items, futures, sizes, strict=True)):
            try:
                self._buffer(item, future, size, deadline, results)
            except BaseException:  # interrupted (Ctrl-C): what was not gathered gives its room back
                self._settled(len(items) - at)
                raise

    def _wait(self, timeout: float | None) -> float:
        wait = self.limits.submit_timeout if timeout is None else timeout
        if not (wait > 0 and math.isfinite(wait)):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        return wait

    def _size(self, index: int, item: Any) -> int:
        try:
            size = len(pack(item, f"item {index} ({type(item).__name__})"))
        except errors.ProtocolError as exc:
            raise errors.ProtocolError(f"batcher {self.name!r}: {exc}") from None
        if size > FRAME_BYTES:
            raise errors.ProtocolError(
                f"batcher {self.name!r}: item {index} takes {size} bytes, more than {FRAME_BYTES}"
            )
        return size

    def _take_room(self, n: int, deadline: float) -> None:
        cond, most = self._cond, self.limits.max_pending
        with cond:
            while self._outstanding and self._outstanding + n > most:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Backpressure(
                        f"batcher {self.name!r}: {self._outstanding} items of this process "
                        f"still without an outcome (max_pending={most})"
                    )
                cond.wait(clamp_wait(left))
            self._outstanding += n

    def _buffer(
        self, item: Any, future: Future[Any] | None, size: int, deadline: float, results: bool
    ) -> None:
        sends: list[_Pending] = []
        with self._cond:
            buf = self._buffers[results]
            if buf.items and buf.bytes + size > FRAME_BYTES:
                sends.append(self._take(results))
                buf = self._buffers[results]
            buf.items.append(item)
            buf.futures.append(future)
            buf.bytes += size
            buf.deadline = min(buf.deadline, deadline)
            first = len(buf.items) == 1
            if len(buf.items) >= self.limits.frame_items:
                sends.append(self._take(results))
                first = False
        for pending in sends:
            self._send(pending, 0.0)
        if first and self._sending is not None:
            self._sending.schedule(time.monotonic() + self.limits.send_interval)

    def _take(self, results: bool) -> _Pending:
        """Under the lock: the buffer as one Submit; it starts again."""
        buf = self._buffers[results]
        self._buffers[results] = _Buffer()
        timeout = max(buf.deadline - time.monotonic(), 1e-3)
        return _Pending(self, Submit(self.name, buf.items, timeout, results), buf.futures)

    def _send_due(self) -> None:
        """The scheduler's thread: send what waited ``send_interval``."""
        with self._cond:
            due = [self._take(r) for r in (True, False) if self._buffers[r].items]
        for pending in due:
            self._send(pending, 0.0)

    def _send(self, pending: _Pending, wait: float) -> None:
        with self._cond:
            self._seq += 1
            pending.seq = self._seq
            self._open[pending.seq] = len(pending.futures)
        try:
            self._route.send(pending.message, pending, wait)
        except LessorError as exc:
            self._answered(pending, None, exc)
        except BaseException as exc:  # interrupted: whether it was accepted is unknown
            self._resolve(pending, None, exc)
            raise

    # -- answers -----------------------------------------------------------------------

    def _answered(self, pending: _Pending, value: Any, error: BaseException | None) -> None:
        if self._in_process and not isinstance(error, ActorRestarted):
            self._resolve(pending, value, error)
            return
        self._answers.append((pending, value, error))  # not on the connection's reader
        self._resolving.schedule(0.0)

    def _resolve_answers(self) -> None:
        """The scheduler's thread: answers for a worker, and submits to send again."""
        retry, self._retry = self._retry, []
        for pending in retry:
            try:
                self._route.send(pending.message, pending, 0.0)
            except ActorRestarted:
                self._retry.append(pending)
            except LessorError as exc:
                self._resolve(pending, None, exc)
        answers = self._answers
        while answers:
            pending, value, error = answers.popleft()
            if isinstance(error, ActorRestarted):  # never accepted: send it again soon
                now = time.monotonic()
                pending.resend_until = pending.resend_until or now + RESEND_FOR
                if now <= pending.resend_until:
                    self._retry.append(pending)
                    continue
            self._resolve(pending, value, error)
        if self._retry:
            self._resolving.schedule(time.monotonic() + RESEND_DELAY)

    def _resolve(self, pending: _Pending, value: Any, error: BaseException | None) -> None:
        try:
            pending.claim.pop()
        except IndexError:
            return  # resolved already (an interrupted send, then the batcher's answer)
        futures = pending.futures
        if error is not None:
            outcomes: list[Any] = [error] * len(futures)
        elif isinstance(value, Results):  # from the runtime, to a worker
            outcomes = value.values or [None] * len(futures)
            for entry in value.errors:
                if 0 <= entry[0] < len(outcomes):
                    outcomes[entry[0]] = remote_error(entry)
        else:
            outcomes = value if isinstance(value, list) else [None] * len(futures)
        for future, outcome in zip(futures, outcomes, strict=False):
            if future is None:
                if isinstance(outcome, BaseException):
                    self._put_failed(outcome)
            elif isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        with self._cond:
            self._open.pop(pending.seq, None)
        self._settled(len(futures))

    def _settled(self, n: int) -> None:
        """``n`` of this handle's items have outcomes: their room is free again."""
        with self._cond:
            self._outstanding -= n
            self._cond.notify_all()

    def _put_failed(self, error: BaseException) -> None:
        self.put_errors += 1
        if self.put_errors <= 10 or self.put_errors % 1000 == 0:
            log.warning("batcher %r: a put item failed (%d so far): %r",
                        self.name, self.put_errors, error)  # fmt: skip

    # -- the rest ----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Run every item handed in so far now; True once each has its outcome, False if
        ``timeout`` seconds (default ``submit_timeout``) passed first."""
        wait = self.limits.submit_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        if self._sending is not None:
            self._send_due()
        with self._cond:
            mark = self._seq
        with contextlib.suppress(errors.ActorStopped):  # (what was sent is answered anyway)
            self._route.ask(FlushBatcher(self.name), wait)
        with self._cond:
            while self._open and next(iter(self._open)) <= mark:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(clamp_wait(left))
        return True

    def stats(self) -> BatcherStats:
        return cast(BatcherStats, self._route.ask(GetStats()))

    @property
    def outstanding(self) -> int:
        """This handle's items without an outcome yet."""
        return self._outstanding

    def close(self) -> None:
        """Send what is gathered and stop the timers (the runtime or the client calls it)."""
        if self._sending is not None:
            self._send_due()
            self._sending.cancel()
        self._resolving.cancel()
        self._resolve_answers()

    def __repr__(self) -> str:
        return f"Batcher({self.name!r}, outstanding={self._outstanding})"
