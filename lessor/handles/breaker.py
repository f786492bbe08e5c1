"""Breaker: the one handle callers use for a circuit breaker, in-process and in workers.

The state lives in the runtime's :class:`~lessor.actors.breaker.BreakerActor`, which
pushes every change to every handle. A handle decides permission from the state it
was pushed, so a call in the closed state costs no round trip: it is timed,
classified (failure, slow, ignored) and its outcome goes into a batch that is sent
one way at least every ``report_interval`` seconds (on the next call, or by a timer
when calls stop). Open and forced-open refuse at once with :class:`BreakerOpen`.
Half-open asks the actor for a probe permit, so across every process no more than
``half_open_calls`` probes run, and reports the probe's outcome at once.

Three ways to guard a call, all the same: ``breaker.call(fn, *args)``, the
decorator ``@breaker``, and ``with breaker:``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from time import perf_counter
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from lessor import holder as holders
from lessor.actors.pool_messages import BreakerGate
from lessor.actors.scheduler import process_scheduler
from lessor.core.breaker import FAILED, IGNORED, SLOW, State, refusal
from lessor.errors import ActorRestarted, BreakerOpen, LessorError
from lessor.handles.actor_route import ActorRoute
from lessor.holder import Holder
from lessor.protocol.messages import (
    BreakerState,
    BreakerStats,
    ForceBreaker,
    GetStats,
    Message,
    Outcomes,
    Probe,
    ProbePermit,
    ProbeResult,
    WatchBreaker,
)
from lessor.specs import BreakerSpec

__all__ = ["Breaker", "BreakerRoute"]

log = logging.getLogger("lessor.breaker")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: A batch is sent at once when it holds this many outcomes.
MAX_BATCH = 4096
_watchers = itertools.count(1)


class BreakerRoute(Protocol):
    """How a handle reaches its breaker's actor (in this process, or over the socket)."""

    def ask(
        self, message: Message, timeout: float | None = None, holder: Holder | None = None
    ) -> Any: ...

    def tell(self, message: Message) -> None: ...


class _Receiver:
    """Where the actor's pushes for an in-process handle go (``holders.bind_receiver``)."""

    __slots__ = ("tell",)

    def __init__(self, tell: Callable[[Message], None]) -> None:
        self.tell = tell


class Breaker:
    """A circuit breaker shared by every process. Thread-safe; one per process and name.

    Made by ``runtime.add_breaker(spec)`` / ``runtime.breaker(name)`` in-process and by
    ``lessor.connect().breaker(name)`` in a worker.
    """

    def __init__(
        self,
        spec: BreakerSpec,
        route: BreakerRoute,
        *,
        in_process: bool,
        read_pushes: Callable[[], None] | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self._route = route
        self._slow = spec.slow_call_duration
        self._interval = spec.report_interval
        self._failed = spec.failed
        # A worker's thread that calls without pause would see a push only when the
        # GIL lets its reader run (up to 5 ms); it reads them itself with each batch.
        self._read_pushes = read_pushes
        # (state, generation, until): replaced whole, so a reader sees one consistent view
        self._view: tuple[State, int, float | None] = ("closed", 0, None)
        self._lock = threading.Lock()  # the batch below
        self._codes = bytearray()
        self._batch_generation = 0
        self._send_at = 0.0  # perf_counter time the batch is due (its first outcome + interval)
        self._rejected = 0
        self._timer = process_scheduler().timer(self.flush)
        self._local = threading.local()  # ``with breaker:``: a stack per thread
        self._on_change: list[Callable[[str, str, str], None]] = []
        self._on_reject: list[Callable[[str, BreakerOpen], None]] = []
        self._holder: Holder | None = None
        #: A worker's state changes, for its listeners (run on the scheduler's thread).
        self._changes: deque[tuple[str, str]] | None = None if in_process else deque()
        self._listening = None if in_process else process_scheduler().timer(self._run_listeners)
        if in_process:  # pushes come to this handle directly; a worker's come on its socket
            self._holder = Holder.watcher(f"{os.getpid()}:{self.name}:{next(_watchers)}")
            holders.bind_receiver(self._holder, _Receiver(self.pushed))

    def subscribe(self) -> None:
        """Ask the actor for its state and for every change from now on (once, by the
        handle's maker, after it routes pushes here)."""
        watch = WatchBreaker(self.name)
        for attempt in range(3):  # through a restart of the actor
            try:
                self.pushed(self._route.ask(watch, None, self._holder))
                return
            except ActorRestarted:
                if attempt == 2:
                    raise

    # -- what it knows -----------------------------------------------------------------

    @property
    def state(self) -> State:
        """The state this handle was last pushed (may lag the actor by one push)."""
        return self._view[0]

    def gate(self) -> BreakerGate:
        """This handle's view, as the message that stops or restarts a pool behind it."""
        state, _, until = self._view
        return BreakerGate(self.name, state, until)

    def guard_pool(self, pool: ActorRoute) -> None:
        """Make the pool behind ``pool`` follow this breaker (``PoolSpec.breaker``)."""

        def follow(_name: str, _old: str, _new: str) -> None:
            pool.deliver_internal(self.gate())  # the newest view, whichever change this was

        self.on_state_change(follow)

    @property
    def until(self) -> float | None:
        """When the open state ends (``time.monotonic()`` seconds), if it is open."""
        return self._view[2]

    def pushed(self, message: Message) -> None:
        """A push from the actor: a newer state replaces this handle's view."""
        if not isinstance(message, BreakerState) or message.breaker != self.name:
            return
        previous = self._view
        if message.generation <= previous[1]:
            return
        self._view = (cast(State, message.state), message.generation, message.until)
        if previous[0] == message.state:
            return
        if self._changes is None or self._listening is None:  # in-process: after a turn, no lock
            self._tell_listeners(previous[0], message.state)
            return
        # In a worker this runs on the thread reading the connection, under its read
        # lock: a listener that asked the runtime anything would wait for itself.
        self._changes.append((previous[0], message.state))
        self._listening.schedule(0.0)  # at once, on the scheduler's thread

    def _run_listeners(self) -> None:
        changes = self._changes
        while changes:
            old, new = changes.popleft()
            self._tell_listeners(old, new)

    def _tell_listeners(self, old: str, new: str) -> None:
        for listener in list(self._on_change):
            try:
                listener(self.name, old, new)
            except Exception:
                log.exception("breaker %r: a state listener failed", self.name)

    def on_state_change(self, listener: Callable[[str, str, str], None]) -> None:
        """Call ``listener(name, old, new)`` on each change this handle is pushed: in a
        worker on the scheduler's thread, in order (keep it short); in-process on the
        thread that carried out the actor's turn."""
        self._on_change.append(listener)

    def on_rejected(self, listener: Callable[[str, BreakerOpen], None]) -> None:
        """Call ``listener(name, error)`` for each call this handle refuses."""
        self._on_reject.append(listener)

    def stats(self) -> BreakerStats:
        self.flush()
        return cast(BreakerStats, self._route.ask(GetStats()))

    # -- the operator ------------------------------------------------------------------

    def force_open(self) -> None:
        """Refuse every call, everywhere, until :meth:`reset`."""
        self._force("forced_open")

    def disable(self) -> None:
        """Let every call through, everywhere, counting nothing, until :meth:`reset`."""
        self._force("disabled")

    def reset(self) -> None:
        """Closed, with an empty window, everywhere."""
        self._force("closed")

    def _force(self, state: str) -> None:
        self.pushed(self._route.ask(ForceBreaker(self.name, state)))

    # -- guarding calls ----------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` if the breaker permits it; else raise BreakerOpen."""
        state, generation, _ = self._view
        if state != "closed":
            return self._guarded(fn, args, kwargs)
        began = perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record(generation, began, exc)
            raise
        now = perf_counter()
        code = SLOW if now - began >= self._slow else 0
        with self._lock:  # the common case: one more outcome in a batch not yet due
            codes = self._codes
            if (
                generation == self._batch_generation
                and codes
                and now < self._send_at
                and len(codes) < MAX_BATCH
            ):
                codes.append(code)
                return result
        self._add(generation, code, now)
        return result

    def __call__(self, fn: F) -> F:
        """``@breaker``: every call of ``fn`` goes through :meth:`call`."""

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return cast(F, guarded)

    def __enter__(self) -> Breaker:
        state, generation, _ = self._view
        probe = None
        if state not in ("closed", "disabled"):
            probe = self._permit(state)
            if probe is None:  # the breaker closed (or was disabled) before the push came
                state, generation, _ = self._view
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append((perf_counter(), generation, state, probe))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        began, generation, state, probe = self._local.stack.pop()
        if probe is not None:
            self._probe_done(probe, began, exc)
        elif state == "closed":
            self._record(generation, began, exc)

    def _guarded(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        state = self._view[0]
        if state == "disabled":
            return fn(*args, **kwargs)
        probe = self._permit(state)
        if probe is None:  # the view turned closed meanwhile
            return self.call(fn, *args, **kwargs)
        began = perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._probe_done(probe, began, exc)
            raise
        self._probe_done(probe, began, None)
        return result

    def _permit(self, state: State) -> ProbePermit | None:
        """A probe permit from the actor, None if the call may run as in the closed
        state after all, or BreakerOpen. Open before its end refuses here, at once."""
        until = self._view[2]
        now = time.monotonic()
        if state == "forced_open" or (state == "open" and until is not None and now < until):
            raise self._refused(refusal(self.name, state, until, now))
        answer = self._route.ask(Probe(self.name))
        if isinstance(answer, ProbePermit):
            return answer
        self.pushed(answer)  # refused: the actor's state, newer than this handle's view
        state, _, until = self._view
        if state in ("closed", "disabled"):
            return None
        raise self._refused(refusal(self.name, state, until, time.monotonic()), count=False)

    def _refused(self, error: BreakerOpen, count: bool = True) -> BreakerOpen:
        if count:
            with self._lock:
                self._rejected += 1
                first = not self._codes and self._rejected == 1
            if first:
                self._timer.schedule(time.monotonic() + self._interval)
        for listener in list(self._on_reject):
            try:
                listener(self.name, error)
            except Exception:
                log.exception("breaker %r: a rejection listener failed", self.name)
        return error

    def _code(self, began: float, exc: BaseException | None) -> int:
        if exc is not None:
            failed = self._failed(exc)
            if failed is None:
                return IGNORED
            code = FAILED if failed else 0
        else:
            code = 0
        return code | SLOW if perf_counter() - began >= self._slow else code

    def _probe_done(self, permit: ProbePermit, began: float, exc: BaseException | None) -> None:
        with contextlib.suppress(LessorError):
            self._route.tell(ProbeResult(self.name, permit.probe, self._code(began, exc)))

    # -- reporting outcomes ------------------------------------------------------------

    def _record(self, generation: int, began: float, exc: BaseException | None) -> None:
        self._add(generation, self._code(began, exc), perf_counter())

    def _add(self, generation: int, code: int, now: float) -> None:
        """One outcome: it may start a batch (and arm the timer) or complete one (send)."""
        send = None
        with self._lock:
            if generation != self._batch_generation and (self._codes or self._rejected):
                send = self._take()  # outcomes of another generation go in their own batch
            codes = self._codes
            arm = not codes and not self._rejected
            if arm:
                self._batch_generation, self._send_at = generation, now + self._interval
            codes.append(code)
            if len(codes) >= MAX_BATCH or now >= self._send_at:
                send = send or self._take()  # (if the old batch went, this one waits)
        if send is not None:
            self._send(send)
            if self._read_pushes is not None:
                self._read_pushes()  # one poll, once a batch
        if arm:
            self._timer.schedule(time.monotonic() + self._interval)

    def _take(self) -> Outcomes:
        """Under the lock: the batch so far, as a message; the batch starts again."""
        batch = Outcomes(self.name, self._batch_generation, bytes(self._codes), self._rejected)
        self._codes = bytearray()
        self._rejected = 0
        return batch

    def flush(self) -> None:
        """Send the outcomes this handle holds now (the timer calls it; so does stats())."""
        with self._lock:
            batch = self._take() if self._codes or self._rejected else None
        if batch is not None:
            self._send(batch)

    def _send(self, batch: Outcomes) -> None:
        try:
            self._route.tell(batch)
        except LessorError as exc:  # the actor is restarting or gone: these are lost
            log.info("breaker %r: %d outcomes not reported: %s", self.name, len(batch.codes), exc)

    def close(self) -> None:
        """Send what is held and stop the timer (the runtime or the client calls it)."""
        self._timer.cancel()
        if self._listening is not None:
            self._listening.cancel()
        self.flush()
        if self._holder is not None:
            holders.report_gone(self._holder)

    def __repr__(self) -> str:
        return f"Breaker({self.name!r}, {self.state})"
