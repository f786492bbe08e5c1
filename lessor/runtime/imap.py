"""Running a map job: its worker group from spawn to stop, and how its caller reads it.

``Runtime.map`` collects every outcome (:func:`collect`), calling ``progress`` in the
caller's thread; ``imap`` and ``imap_unordered`` hand outcomes out as they come
(:class:`MapIterator`). Outcomes arrive in the job's queue, so the caller never waits
under a lock: a Ctrl-C (the runtime's handler shutting it down, or a plain
KeyboardInterrupt) lands in a wait that holds nothing.

Stopping is idempotent and always bounded: no more work is handed out, workers get
Drain and ``grace`` seconds to finish their item, then SIGTERM and SIGKILL. A second
Ctrl-C during it hurries it (SIGKILL now). An abandoned iterator is stopped by its
watcher thread: the garbage collector may finalize it on any thread, holding any
lock, so its finalizer only puts a word in a SimpleQueue (made for exactly that).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lessor.errors import MapInterrupted, MapTimeout, RuntimeStopped, TaskFailed
from lessor.runtime.mapjob import MapJob, Outcome

if TYPE_CHECKING:
    from lessor.runtime.outcome import GroupOutcome
    from lessor.supervisor.child import ChildRef
    from lessor.supervisor.worker_messages import Hurry
    from lessor.transport.node import Node

__all__ = ["STOP_GRACE", "Either", "MapIterator", "MapRun", "collect"]

#: Seconds a worker gets to finish its item once its results are not wanted any more
#: (done, failed, timed out, closed, abandoned), before SIGTERM (and SIGKILL 1 s later).
STOP_GRACE = 1.0

Spawn = Callable[[int, "Hurry"], "tuple[ChildRef, GroupOutcome]"]
StopGroup = Callable[["ChildRef", float], None]


class Either:
    """Set when any of its events is: a map group hurries for its own Ctrl-C or the runtime's."""

    def __init__(self, *events: Hurry) -> None:
        self._events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)


class MapRun:
    """One job's worker group, from spawn to stop; its outcomes, read by one caller."""

    def __init__(
        self,
        job: MapJob,
        node: Node,
        spawn: Spawn,
        stop_group: StopGroup,
        workers: int,
        timeout: float | None,
    ) -> None:
        self.job = job
        self.node = node
        self.group: ChildRef | None = None
        self.outcome: GroupOutcome | None = None
        self.hurry = threading.Event()  # this job's own: a second Ctrl-C while it stops
        self._spawn, self._stop_group, self._workers = spawn, stop_group, workers
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()
        self._wake: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._watcher: threading.Thread | None = None

    def start(self, watch: bool = False) -> None:
        """Register the job and spawn its workers; ``watch``: an iterator's, stopped by a
        watcher thread if it is dropped unfinished."""
        self.node.register(self.job.name, self.job)
        if not self.job.total:
            return
        self.group, self.outcome = self._spawn(min(self._workers, self.job.total), self.hurry)
        self.outcome.when_settled(self._settled)
        if watch:
            self._watcher = threading.Thread(target=self._watch, daemon=True,
                                             name=f"lessor-{self.job.name}-watch")  # fmt: skip
            self._watcher.start()

    def next(self) -> Outcome:
        """The next outcome decided; MapTimeout once the job's deadline has passed."""
        left = None if self._deadline is None else self._deadline - time.monotonic()
        try:
            if left is not None and left <= 0:
                raise queue.Empty
            return self.job.outcomes.get(timeout=left)
        except queue.Empty:
            raise MapTimeout(f"{self.job.name} did not finish in {self._timeout}s") from None

    def leftovers(self) -> list[Outcome]:
        """Outcomes decided but not read yet (after a stop: those of the drain)."""
        found: list[Outcome] = []
        with contextlib.suppress(queue.Empty):
            while True:
                found.append(self.job.outcomes.get_nowait())
        return found

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the workers (``grace`` s to finish their item), remove the group, and
        unregister the job. Idempotent: a second caller waits for the first. A
        KeyboardInterrupt meanwhile hurries it, and is raised once it is done."""
        self.job.closed = True  # no more work for anyone
        with self._lock:
            first, self._stopping = not self._stopping, True
        if not first:  # the watcher is stopping it: wait for that, hurried by a Ctrl-C
            try:
                self._stopped.wait()
            except KeyboardInterrupt:
                self.hurry.set()
                raise
            return
        interrupted: KeyboardInterrupt | None = None
        try:
            while self.group is not None:
                try:
                    self._stop_group(self.group, grace)  # each step is idempotent
                    break
                except KeyboardInterrupt as exc:
                    interrupted = exc
                    self.hurry.set()
        finally:
            self.node.unregister(self.job.name)
            self.job.close()
            self._stopped.set()
            self._wake.put("stopped")
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()  # it has nothing left to do: it returns at once
        if interrupted is not None:
            raise interrupted

    def abandon(self) -> None:
        """The iterator was dropped unfinished. Called by its finalizer, on any thread:
        so nothing here takes a lock or waits."""
        self.job.closed = True
        self._wake.put("abandoned")

    def _settled(self) -> None:
        self.job.cut_short("no worker left to run it")
        self._wake.put("settled")

    def _watch(self) -> None:
        why = self._wake.get()
        if why == "stopped":
            return
        if why == "settled" and isinstance(getattr(self.outcome, "error", None), RuntimeStopped):
            # The runtime is shutting down and stops its groups itself; the job goes now,
            # or an iterator dropped later would leave it registered.
            self.node.unregister(self.job.name)
            self.job.close()
            return
        self.stop()


class _Tally:
    """What ``map`` has so far: values, failures and cut items, by index."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.values: dict[int, Any] = {}
        self.errors: dict[int, TaskFailed] = {}
        self.cut: dict[int, TaskFailed] = {}

    @property
    def done(self) -> int:
        return len(self.values) + len(self.errors)

    @property
    def complete(self) -> bool:
        return self.done + len(self.cut) >= self.total

    def add(self, outcome: Outcome) -> bool:
        """Record ``outcome``; whether an item finished by it (not cut, not seen before)."""
        index = outcome.index
        if index in self.values or index in self.errors:
            return False
        if outcome.cut:
            assert outcome.error is not None
            self.cut[index] = outcome.error
            return False
        self.cut.pop(index, None)  # a draining worker finished it after all
        if outcome.error is None:
            self.values[index] = outcome.value
        else:
            self.errors[index] = outcome.error
        return True

    def interrupted(self, job: str, exc: KeyboardInterrupt) -> MapInterrupted:
        text = f"{job} interrupted: {self.done} of {self.total} items done"
        if self.errors:
            text += f", {len(self.errors)} of them failed"
        error = MapInterrupted(text, self.values, self.errors, self.total)
        if getattr(exc, "lessor_quiet", False):  # the runtime's own Ctrl-C: one line if uncaught
            error.lessor_quiet = True  # type: ignore[attr-defined]
        return error

    def results(self, return_exceptions: bool) -> list[Any]:
        failed = {**self.cut, **self.errors}
        if failed and not return_exceptions:
            raise failed[min(failed)]
        return [failed[i] if i in failed else self.values.get(i) for i in range(self.total)]


def collect(
    run: MapRun,
    progress: Callable[[int, int], object] | None,
    return_exceptions: bool,
    interrupt_grace: float,
) -> list[Any]:
    """``Runtime.map``: every result in order, ``progress(done, total)`` after each item.

    Ctrl-C stops the workers (``interrupt_grace`` s for the items under way, whose
    results are kept) and raises MapInterrupted with what finished. When the group ends
    before the job does, the items left fail; if it ended with an error (it gave up:
    WorkersFailed; the runtime shut down: RuntimeStopped) that is raised instead.
    """
    tally = _Tally(run.job.total)
    try:
        run.start()
        while not tally.complete:
            if tally.add(run.next()) and progress is not None:
                progress(tally.done, tally.total)
    except KeyboardInterrupt as exc:
        with contextlib.suppress(KeyboardInterrupt):  # another Ctrl-C only hurries the stop
            run.stop(interrupt_grace)
        for outcome in run.leftovers():
            tally.add(outcome)
        raise tally.interrupted(run.job.name, exc) from None
    except BaseException:
        run.stop()
        raise
    try:
        run.stop()
    except KeyboardInterrupt as exc:  # everything was done already
        raise tally.interrupted(run.job.name, exc) from None
    error = None if run.outcome is None else run.outcome.error
    if tally.cut and error is not None:
        raise error.with_traceback(None)
    return tally.results(return_exceptions)


class MapIterator(Iterator[Any]):
    """The results of ``Runtime.imap`` (in item order) or ``imap_unordered`` (as they
    finish). Its workers run from the moment it is made.

    A failed item raises its TaskFailed when reached (with ``return_exceptions``: is
    yielded in its place); after any exception, a KeyboardInterrupt included, the
    iterator is finished and its workers stopped. ``close()`` (or leaving a ``with``
    block) stops them at once; an iterator dropped unfinished (a ``break`` out of its
    loop) has them stopped in the background.
    """

    def __init__(self, run: MapRun, ordered: bool, return_exceptions: bool) -> None:
        self._run = run
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._ahead: dict[int, Outcome] = {}  # in order: outcomes before their turn
        self._seen: set[int] = set()  # unordered: indices handed out
        self._given = 0
        self._finished = False
        self._finalizer = weakref.finalize(self, run.abandon)
        self._finalizer.atexit = False  # at exit the runtime's own shutdown stops the group

    @property
    def total(self) -> int:
        """How many items there are."""
        return self._run.job.total

    def __iter__(self) -> MapIterator:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        try:
            outcome = self._take()
        except KeyboardInterrupt:
            self._finish(quiet=True)
            raise
        except BaseException:  # StopIteration (all given), MapTimeout, ...
            self._finish()
            raise
        if outcome.error is None:
            return outcome.value
        group_error = None if self._run.outcome is None else self._run.outcome.error
        if outcome.cut and group_error is not None:
            self._finish()
            raise group_error.with_traceback(None)
        if self._return_exceptions:
            return outcome.error
        self._finish()
        raise outcome.error

    def close(self) -> None:
        """Stop the workers now (each gets STOP_GRACE s to finish its item); idempotent."""
        if not self._finished:
            self._finish()

    def __enter__(self) -> MapIterator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _take(self) -> Outcome:
        total = self._run.job.total
        if self._given >= total:
            raise StopIteration
        while True:
            if self._ordered and self._given in self._ahead:
                self._given += 1
                return self._ahead.pop(self._given - 1)
            outcome = self._run.next()
            index = outcome.index
            if self._ordered:  # a finished outcome replaces a cut one not given yet
                if index >= self._given and not (outcome.cut and index in self._ahead):
                    self._ahead[index] = outcome
            elif index not in self._seen:
                self._seen.add(index)
                self._given += 1
                return outcome

    def _finish(self, quiet: bool = False) -> None:
        self._finished = True
        self._finalizer.detach()
        if quiet:  # a KeyboardInterrupt is on its way already: another only hurries this
            with contextlib.suppress(KeyboardInterrupt):
                self._run.stop()
        else:
            self._run.stop()
