"""MapJob: hands out the items of ``Runtime.map`` to worker processes, one at a time.

Workers ask for their next item (``NextTask``) and tell their result
(``TaskResult``). An item whose worker dies is handed out once more; if that
worker dies too, the item fails with TaskFailed. Items and results must be
msgpack-safe, like everything else that crosses processes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from lessor import holder as holders
from lessor.actors.reply import Reply, answer, answer_error
from lessor.errors import MapTimeout, ProtocolError, TaskFailed
from lessor.holder import Holder
from lessor.protocol import wire
from lessor.protocol.messages import Message, NextTask, Task, TaskResult

if TYPE_CHECKING:
    from lessor.runtime.outcome import GroupOutcome
    from lessor.supervisor.child import ChildRef
    from lessor.transport.node import Node

__all__ = ["MapJob", "map_worker", "run_map"]

_MAX_ATTEMPTS = 2


class MapJob:
    """A node target: the items, who is working on which, and the results so far."""

    def __init__(self, name: str, items: Iterable[Any]) -> None:
        self.name = name
        self.items = list(items)
        for index, item in enumerate(self.items):
            try:  # refuse what cannot cross, before any work: the very frame it will go in
                wire.frame(wire.Kind.REPLY, 0, "", Task(index, item))
            except ProtocolError as exc:
                raise ProtocolError(f"map item {index}: {exc}") from exc
        self.results: list[Any] = [None] * len(self.items)
        self.failed: dict[int, TaskFailed] = {}
        self._todo: deque[int] = deque(range(len(self.items)))
        self._attempts = [0] * len(self.items)
        self._working: dict[str, set[int]] = {}
        self._remaining = len(self.items)
        self.cut = False  # items were failed because no worker was left to run them
        self._cond = threading.Condition()
        holders.subscribe(self._holder_gone)

    def deliver(self, message: Message, reply: Reply | None, holder: Holder) -> None:
        if isinstance(message, NextTask):
            with self._cond:  # decide under the lock, answer outside it
                task = Task(-1, None)
                if self._todo:
                    index = self._todo.popleft()
                    self._attempts[index] += 1
                    self._working.setdefault(holder, set()).add(index)
                    task = Task(index, self.items[index])
            if not answer(reply, task) and task.index >= 0:
                self._untake(holder, task.index)
        elif isinstance(message, TaskResult) and 0 <= message.index < len(self.items):
            with self._cond:
                self._finish(holder, message)
        else:
            kind = type(message).__name__
            answer_error(reply, ProtocolError(f"a map job does not take {kind}"))

    def _untake(self, holder: Holder, index: int) -> None:
        """The worker never got item ``index`` (it gave up or died): hand it out again."""
        with self._cond:
            working = self._working.get(holder)
            if working is not None and index in working:  # not requeued by _holder_gone
                working.discard(index)
                self._attempts[index] -= 1
                self._todo.appendleft(index)
                self._cond.notify_all()

    def cancel(self, reply: Reply, holder: Holder) -> None:
        """A NextTask is answered at once: there is nothing to cancel."""

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._remaining:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        holders.unsubscribe(self._holder_gone)

    def cut_short(self, why: str) -> None:
        """The workers are gone for good: every item not done yet fails with ``why``."""
        with self._cond:
            left = sorted({*self._todo, *(i for held in self._working.values() for i in held)})
            self._todo.clear()
            self._working.clear()
            for index in left:
                self.failed[index] = TaskFailed(f"item {index}: {why}")
            self._remaining = 0
            self.cut = self.cut or bool(left)
            self._cond.notify_all()

    def _finish(self, holder: str, result: TaskResult) -> None:
        index = result.index
        working = self._working.get(holder, set())
        if index not in working:
            return  # a late answer for an item already given to someone else
        working.discard(index)
        if result.ok:
            self.results[index] = result.value
        else:
            self.failed[index] = TaskFailed(f"item {index}: {result.error}")
        self._remaining -= 1
        self._cond.notify_all()

    def _holder_gone(self, holder: str) -> None:
        with self._cond:
            for index in self._working.pop(holder, set()):
                if self._attempts[index] < _MAX_ATTEMPTS:
                    self._todo.appendleft(index)
                else:
                    self.failed[index] = TaskFailed(f"item {index}: its worker died, twice")
                    self._remaining -= 1
            self._cond.notify_all()


def run_map(
    job: MapJob,
    node: Node,
    spawn: Callable[[int], tuple[ChildRef, GroupOutcome]],
    stop: Callable[[ChildRef], object],
    workers: int,
    timeout: float | None,
    return_exceptions: bool,
) -> list[Any]:
    """Run ``job`` on ``spawn(n)``'s worker group; the results, in order (Runtime.map).

    When the group ends before the job does, the items left fail; if it ended with an
    error (it gave up: WorkersFailed; the runtime shut down: RuntimeStopped), that is
    raised instead.
    """
    node.register(job.name, job)
    try:
        if job.items:
            group, outcome = spawn(min(workers, len(job.items)))
            outcome.when_settled(lambda: job.cut_short("no worker left to run it"))
            try:
                if not job.wait(timeout):
                    raise MapTimeout(f"{job.name} did not finish in {timeout}s")
            finally:
                stop(group)  # most have exited
            if job.cut and outcome.error is not None:
                raise outcome.error.with_traceback(None)
    finally:
        node.unregister(job.name)
        job.close()
    results = list(job.results)
    for index, error in sorted(job.failed.items()):
        if not return_exceptions:
            raise error
        results[index] = error
    return results


def map_worker(job: str, fn: Callable[[Any], Any]) -> None:
    """The target of ``Runtime.map`` workers: ask for items until there are none."""
    from lessor.worker.client import connect

    client = connect()
    while not client.draining.is_set():
        task: Task = client.ask(job, NextTask(job))
        if task.index < 0:
            return
        try:
            result = TaskResult(job, task.index, True, fn(task.item), "")
        except Exception as exc:
            result = TaskResult(job, task.index, False, None, f"{type(exc).__name__}: {exc}")
        try:
            client.tell(job, result)
        except ProtocolError as exc:
            client.tell(job, TaskResult(job, task.index, False, None, str(exc)))
