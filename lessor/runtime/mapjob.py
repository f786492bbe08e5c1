"""MapJob: hands out the items of ``Runtime.map`` and ``imap`` to worker processes.

A worker asks for work (``NextTask``) and is answered with up to ``chunksize``
consecutive items (``Task``), so a round trip is paid per chunk, not per item. It
tells each item's outcome on its own (``TaskResult``, one way), so progress stays per
item. The job decides under its lock and puts what it decided in ``outcomes``, a queue
the caller's thread reads: nothing the caller passed in (a progress callback) runs on
a socket reader or under a lock.

An item whose worker dies is handed out again, on its own; a second death on it fails
it. Only the item the worker was running counts as an attempt: a worker runs its chunk
in order, so the items after it were never started. Items and results must be
msgpack-safe, like everything else that crosses processes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lessor import holder as holders
from lessor.actors.reply import Reply, answer, answer_error
from lessor.errors import LessorError, ProtocolError, TaskFailed
from lessor.holder import Holder
from lessor.protocol import wire
from lessor.protocol.messages import (
    MAX_ERROR_TEXT,
    MAX_ERROR_TYPE,
    MAX_TRACEBACK,
    Message,
    NextTask,
    Task,
    TaskResult,
)

__all__ = ["CHUNK_BYTES", "MapJob", "Outcome", "map_worker"]

_MAX_ATTEMPTS = 2
#: A chunk holds more than one item only while its items' frames add up to at most
#: this many bytes, whatever ``chunksize`` says: a Task stays well under the frame limit.
CHUNK_BYTES = wire.MAX_FRAME // 4


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item's outcome, for the caller: its ``value``, or its ``error``.

    ``cut``: it was not done because no worker was left to run it (the group ended); a
    later outcome of the same item (a draining worker finishing it) replaces a cut one.
    """

    index: int
    value: Any = None
    error: TaskFailed | None = None
    cut: bool = False


class MapJob:
    """A node target: the items, who holds which, and the outcomes decided so far."""

    def __init__(self, name: str, items: Iterable[Any], chunksize: int = 1) -> None:
        self.name = name
        self.items = list(items)
        self.chunksize = chunksize
        self._sizes = [_frame_size(index, item) for index, item in enumerate(self.items)]
        self.outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        #: No more work is handed out: the caller stopped the job, or it was cut short.
        self.closed = False
        self._lock = threading.RLock()
        self._next = 0  # the first item never handed out
        self._retry: deque[int] = deque()  # items handed out again, one at a time
        self._attempts = [0] * len(self.items)
        self._working: dict[Holder, dict[int, None]] = {}  # by worker, in hand-out order
        self._settled = [False] * len(self.items)  # it has its outcome
        holders.subscribe(self._holder_gone)

    @property
    def total(self) -> int:
        return len(self.items)

    def deliver(self, message: Message, reply: Reply | None, holder: Holder) -> None:
        if isinstance(message, NextTask):
            with self._lock:  # decide under the lock, answer outside it
                taken = self._take(holder) if message.more else []
            task = Task(taken[0], [self.items[i] for i in taken]) if taken else Task(-1, [])
            if not answer(reply, task) and taken:
                self._untake(holder, taken)
        elif isinstance(message, TaskResult) and 0 <= message.index < len(self.items):
            with self._lock:
                outcome = self._finish(holder, message)
            if outcome is not None:
                self.outcomes.put(outcome)
        else:
            kind = type(message).__name__
            answer_error(reply, ProtocolError(f"a map job does not take {kind}"))

    def cancel(self, reply: Reply, holder: Holder) -> None:
        """A NextTask is answered at once: there is nothing to cancel."""

    def close(self) -> None:
        holders.unsubscribe(self._holder_gone)

    def cut_short(self, why: str) -> None:
        """The group ended: every item without an outcome is cut, saying ``why``.

        Items a draining worker still runs keep their place: their results are taken.
        """
        with self._lock:
            self.closed = True
            self._retry.clear()
            self._next = len(self.items)
            left = [index for index, settled in enumerate(self._settled) if not settled]
        for index in left:
            failed = TaskFailed(f"item {index}: {why}", index=index)
            self.outcomes.put(Outcome(index, error=failed, cut=True))

    def _take(self, holder: Holder) -> list[int]:
        """The next chunk for ``holder``: one item handed out again, or fresh ones in a row."""
        if self.closed:
            return []
        if self._retry:
            taken = [self._retry.popleft()]
        else:
            taken, budget = [], CHUNK_BYTES
            while self._next < len(self.items) and len(taken) < self.chunksize:
                size = self._sizes[self._next]
                if taken and size > budget:
                    break
                taken.append(self._next)
                budget -= size
                self._next += 1
        for index in taken:
            self._attempts[index] += 1
        self._working.setdefault(holder, {}).update(dict.fromkeys(taken))
        return taken

    def _untake(self, holder: Holder, taken: list[int]) -> None:
        """The worker never got these items (it gave up or died): hand them out again."""
        with self._lock:
            working = self._working.get(holder, {})
            back = [index for index in taken if index in working]  # else _holder_gone did
            for index in back:
                del working[index]
                self._attempts[index] -= 1
            self._retry.extendleft(reversed(back))

    def _finish(self, holder: Holder, result: TaskResult) -> Outcome | None:
        index = result.index
        working = self._working.get(holder, {})
        if index not in working or self._settled[index]:
            return None  # a late answer for an item already given to someone else
        del working[index]
        self._settled[index] = True
        if result.ok:
            return Outcome(index, result.value)
        head = f"{result.error_type}: {result.error}" if result.error else result.error_type
        failed = TaskFailed(f"item {index}: {head}", result.error_type, result.error,
                            result.traceback, index)  # fmt: skip
        return Outcome(index, error=failed)

    def _holder_gone(self, holder: Holder) -> None:
        with self._lock:
            working = sorted(self._working.pop(holder, {}))
            again, failed = [], []
            for position, index in enumerate(working):
                if position:  # never started: the worker was still on an earlier item
                    self._attempts[index] -= 1
                if self._attempts[index] < _MAX_ATTEMPTS:
                    again.append(index)
                else:
                    self._settled[index] = True
                    failed.append(index)
            self._retry.extendleft(reversed(again))
        for index in failed:
            died = TaskFailed(f"item {index}: its worker died, twice", index=index)
            self.outcomes.put(Outcome(index, error=died))


def _frame_size(index: int, item: Any) -> int:
    """Refuse what cannot cross, before any work, in the very frame it will go in (with
    the longest correlation id); its size is what the item adds to a chunk's frame."""
    try:
        return len(wire.frame(wire.Kind.REPLY, 2**64 - 1, "", Task(index, [item])))
    except ProtocolError as exc:
        raise ProtocolError(f"map item {index}: {exc}") from exc


def map_worker(job: str, fn: Callable[[Any], Any]) -> None:
    """The target of map workers: ask for chunks until there are none, tell each result.

    On Drain the worker stops before its next item: the rest of its chunk goes back to
    the job when it exits, not counted as attempts. Its last results are one-way
    frames, so before it exits it makes one round trip that answers after them.
    """
    from lessor.worker.client import connect

    client = connect()
    while not client.draining.is_set():
        task: Task = client.ask(job, NextTask(job))
        if not task.items:
            return
        for offset, item in enumerate(task.items):
            if client.draining.is_set():
                break
            _run(client.tell, job, task.index + offset, fn, item)
    with contextlib.suppress(LessorError):  # (a runtime that is gone has them all)
        client.ask(job, NextTask(job, more=False))


def _run(
    tell: Callable[[str, Message], None], job: str, index: int, fn: Callable[[Any], Any], item: Any
) -> None:
    try:
        result = TaskResult(job, index, True, fn(item), "")
    except Exception as exc:
        result = _failed(job, index, exc)
    try:
        tell(job, result)
    except ProtocolError as exc:  # the result cannot travel (too big, or not a value)
        tell(job, _failed(job, index, exc))


def _failed(job: str, index: int, exc: Exception) -> TaskResult:
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    try:
        text = str(exc)
    except Exception:
        text = f"<{name}: str() failed>"
    where = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # not _run
    formatted = "".join(traceback.format_exception(kind, exc, where))
    text, name = _bounded(_utf8(text), MAX_ERROR_TEXT), _bounded(name, MAX_ERROR_TYPE)
    return TaskResult(job, index, False, None, text, name,
                      _bounded(_utf8(formatted), MAX_TRACEBACK))  # fmt: skip


def _utf8(text: str) -> str:
    """``text`` that can travel: a lone surrogate (a surrogate-escaped file name in a
    message) made the whole TaskResult unsendable, and the real error was lost."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters in the middle: a traceback's outer frames
    and its last ones (where it failed, and why) are both kept."""
    if len(text) <= limit:
        return text
    keep = limit - 64  # room for the line that says how much was cut
    head, tail = keep // 4, keep - keep // 4
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail :]}"
