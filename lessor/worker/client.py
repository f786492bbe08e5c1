"""Client: a worker process's connection to its runtime.

One connection per process, shared by all its threads (and its pykka actors).
Requests carry a correlation id, so replies may come back in any order and a
waiting Acquire never holds up another thread's Release. Whichever thread reads
takes every frame: replies go to their waiting callers, pushes (``Drain``,
``LeaseExpired``, ``ReturnParked``) to the client's handlers. If the runtime goes
away, pending requests fail and the worker is asked to exit (SIGTERM to itself).
``client.pool(name)`` caches leases in the worker (see :class:`RemotePool`).

A request the caller stops waiting for (its timeout, or any exception while it
waits, KeyboardInterrupt included) is cancelled with a CANCEL frame; an Acquire
granted meanwhile is given back, by the runtime or, if the grant was already on its
way, by this client when it arrives. No lease is lost to an abandoned wait.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing import connection as mpc
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import TYPE_CHECKING, Any

from lessor import errors
from lessor import holder as holders
from lessor.actors.pool import EvictIdle
from lessor.errors import AcquireTimeout, ActorStopped, LessorError, ProtocolError
from lessor.handles import ops as leases
from lessor.handles.ops import LeaseOps
from lessor.protocol import wire
from lessor.protocol.messages import (
    Acquire,
    Describe,
    Drain,
    ErrorReply,
    Hello,
    Lease,
    LeaseExpired,
    Message,
    PoolInfo,
    Release,
    ReturnParked,
)
from lessor.protocol.wire import Kind
from lessor.specs import PoolSpec
from lessor.transport.node import ENV_ADDRESS, ENV_AUTHKEY, ENV_WORKER, HANDSHAKE_TIMEOUT
from lessor.transport.spin import SpinBudget
from lessor.worker.remote import RemotePool

if TYPE_CHECKING:
    from lessor.handles.pool import PoolHandle

__all__ = ["Client", "RemotePool", "SpinBudget", "connect", "open_connection"]

log = logging.getLogger("lessor.worker.client")

#: The longest single wait (a poll, a condition) a client makes; longer waits loop.
MAX_WAIT = 86400.0


def _error(reply: ErrorReply) -> LessorError:
    cls = getattr(errors, reply.error, None)
    if not (isinstance(cls, type) and issubclass(cls, LessorError)):
        cls = LessorError
    return cls(reply.text)


def open_connection(
    address: str, authkey: bytes, worker_id: str, timeout: float = HANDSHAKE_TIMEOUT
) -> Connection:
    """Connect to a runtime's node as ``worker_id``, whose key is ``authkey``.

    HELLO first (it names the worker, so the node knows which key to expect), then
    each side proves it holds that key, then the node answers HELLO or refuses.
    """
    conn = mpc.Client(address, family="AF_UNIX")
    try:
        timed = wire.Deadline(conn, time.monotonic() + timeout)
        conn.send_bytes(
            wire.frame(Kind.HELLO, 0, "", Hello(wire.PROTOCOL_VERSION, worker_id, os.getpid()))
        )
        answer_challenge(timed, authkey)  # type: ignore[arg-type]
        deliver_challenge(timed, authkey)  # type: ignore[arg-type]
        kind, _, _, answer = wire.parse(timed.recv_bytes(wire.MAX_FRAME))
        if kind != Kind.HELLO:
            text = answer.text if isinstance(answer, ErrorReply) else "no HELLO"
            raise ProtocolError(f"runtime refused the connection: {text}")
    except BaseException:
        conn.close()
        raise
    return conn


def _ms(seconds: float) -> int:
    """A poll timeout: milliseconds, rounded up, at most MAX_WAIT (poll takes a C int)."""
    return max(0, int(min(seconds, MAX_WAIT) * 1000) + 1)


class _Waiter:
    """One pending request: answered by whichever thread reads its reply.

    The reader and an asker that gives up race for ``claim`` (a list pop, atomic
    under the GIL); the reader stores the answer before it claims, so an asker that
    loses finds the answer in ``value``/``error``.
    """

    __slots__ = ("claim", "done", "error", "gives_back", "target", "value")

    def __init__(self, target: str, gives_back: bool) -> None:
        self.claim = [True]
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.target = target
        self.gives_back = gives_back  # an Acquire: a Lease nobody takes goes back to the pool


#: The background reader waits this long after the last request before it reads, so
#: that a thread asking in a loop reads its own replies (no thread hand-off).
IDLE_BEFORE_READING = 0.01


class Client:
    """A worker's connection. Thread-safe; ``lessor.connect()`` returns the process's one.

    Reading is leader/follower: a thread waiting for a reply reads the connection
    itself when no other thread is, and hands the replies it reads for others to
    them. That saves a thread hand-off per request (tens of µs). When no request is
    under way, a background thread reads pushes (Drain, LeaseExpired) and notices a
    dead runtime.
    """

    def __init__(self, address: str, authkey: bytes, worker_id: str) -> None:
        self.worker_id = worker_id
        self._conn = open_connection(address, authkey, worker_id)
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._poller = select.poll()  # made once: conn.poll() builds a selector every call
        self._spin = SpinBudget()
        self._poller.register(self._conn.fileno(), select.POLLIN)
        self._cv = threading.Condition(threading.Lock())
        self._pending: dict[int, _Waiter] = {}
        self._cancelled: dict[int, _Waiter] = {}  # CANCEL sent: one more frame will come
        self._acquire_timeouts: dict[str, float] = {}  # pool -> its acquire_timeout
        self._describe_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._active = 0  # threads inside ask()
        self._following = 0  # of those, waiting for another thread to read their reply
        self._idle = threading.Condition(self._cv._lock)  # type: ignore[attr-defined]
        self._last_active = time.monotonic()
        self._closing = False
        self._lost_done = False
        self.draining = threading.Event()
        self.drain_deadline_s: float | None = None
        self._handlers: list[Callable[[Message], None]] = []
        self._cached: dict[str, RemotePool] = {}
        #: Process-scoped pools of the runtime: this process runs its own of each.
        self.local_specs: dict[str, PoolSpec] = {}
        self._local: dict[str, PoolHandle] = {}
        self.on_lost: Callable[[], None] = _terminate_self
        # Leases lent to this process's threads, so a thread that dies gives its back.
        self._borrowed: dict[str, dict[str, RemotePool]] = {}  # thread holder -> leases
        self._borrower: dict[str, str] = {}  # lease id -> thread holder
        holders.subscribe(self._thread_gone)
        self._reader = threading.Thread(target=self._background, name="lessor-client",
                                        daemon=True)  # fmt: skip
        self._reader.start()

    # -- requests ----------------------------------------------------------------------

    def ask(self, target: str, message: Message, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = leases.REQUEST_TIMEOUT
        if not timeout >= 0:
            raise ValueError(f"timeout must be a number >= 0, got {timeout!r}")
        corr = next(self._ids)
        data = wire.frame(Kind.ASK, corr, target, message)  # a bad message fails here, not later
        waiter = _Waiter(target, isinstance(message, Acquire))
        cv = self._cv
        with cv:
            if self._lost_done:
                raise ActorStopped("the runtime is gone")
            self._pending[corr] = waiter
            self._active += 1
        try:
            self._send(data)
            self._wait(waiter, time.monotonic() + timeout)
        except BaseException:  # interrupted while waiting (KeyboardInterrupt) or gone
            if not self._abandon(corr, waiter):
                self._give_back(waiter, waiter.value)  # answered just now: nobody takes it
            raise
        finally:
            with cv:  # the background reader notices on its own: waking it costs the caller
                self._active -= 1
                self._last_active = time.monotonic()
        if not waiter.done and self._abandon(corr, waiter):
            if isinstance(message, Acquire):
                raise AcquireTimeout(f"runtime did not answer in {timeout:g}s")
            raise LessorError(f"runtime did not answer in {timeout:g}s")
        if waiter.error is not None:  # (answered, possibly at the very last moment)
            raise waiter.error
        return waiter.value

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
            # The reader holds the answer (it will find the claim gone and give back a
            # grant), or the connection is lost: no CANCEL, no frame to wait for.
            self._cancelled.pop(corr, None)
            return True
        try:
            self._send(wire.frame(Kind.CANCEL, corr, waiter.target, None))
        except LessorError:
            self._cancelled.pop(corr, None)
        return True

    def _give_back(self, waiter: _Waiter, value: Any) -> None:
        """A grant for an Acquire whose caller has gone: back to the pool it came from."""
        if waiter.gives_back and waiter.error is None and isinstance(value, Lease):
            with contextlib.suppress(LessorError):
                self.tell(waiter.target, Release(value.id))

    def acquire_timeout(self, pool: str) -> float:
        """The pool's own ``acquire_timeout``: asked once per pool (Describe), then known."""
        known = self._acquire_timeouts.get(pool)
        if known is not None:
            return known
        with self._describe_lock:
            known = self._acquire_timeouts.get(pool)
            if known is None:
                try:
                    info = self.ask(pool, Describe(pool))
                except ProtocolError:  # a runtime whose pools do not answer Describe
                    info = None
                known = (
                    info.acquire_timeout
                    if isinstance(info, PoolInfo)
                    else leases.DEFAULT_ACQUIRE_TIMEOUT
                )
                self._acquire_timeouts[pool] = known
        return known

    def tell(self, target: str, message: Message) -> None:
        self._send(wire.frame(Kind.TELL, 0, target, message))

    def pool(self, name: str, *, cache: bool = True) -> LeaseOps:
        """A pool of the runtime, with the same lease API as in-process.

        By default released leases are parked in this process and reused without a
        round trip until the pool asks for them back (see :class:`RemotePool`); the
        process shares one such handle per pool. ``cache=False`` gives a handle whose
        every Acquire and Release goes to the pool.

        For a process-scoped pool this is the worker's own pool (live connections),
        each resource holding a lease on the runtime's global quota.
        """
        if name in self.local_specs:
            return self._local_pool(name)
        if not cache:
            return RemotePool(self, name)
        with self._cv:
            pool = self._cached.get(name)
            if pool is None:
                pool = self._cached[name] = RemotePool(self, name, cache=True)
        return pool

    def _local_pool(self, name: str) -> PoolHandle:
        from lessor.handles.pool import start_pool
        from lessor.worker.local_pools import local_spec

        with self._cv:
            handle = self._local.get(name)
            if handle is None:
                spec = local_spec(self.local_specs[name], RemotePool(self, name))
                handle = self._local[name] = start_pool(spec)
                if len(self._local) == 1:
                    self.on_push(self._quota_wanted)
        return handle

    def _quota_wanted(self, message: Message) -> None:
        if isinstance(message, ReturnParked) and message.pool in self._local:
            with contextlib.suppress(Exception):
                self._local[message.pool].actor_ref.tell(EvictIdle())

    def on_push(self, handler: Callable[[Message], None]) -> None:
        """Call ``handler(message)`` for every push (Drain, LeaseExpired), on a reading thread."""
        self._handlers.append(handler)

    def close(self) -> None:
        holders.unsubscribe(self._thread_gone)
        for local in list(self._local.values()):
            with contextlib.suppress(Exception):
                local.stop(timeout=10)  # closes its resources, giving their quota back
        for pool in list(self._cached.values()):
            with contextlib.suppress(LessorError):
                pool.flush()  # give parked leases back rather than have them reclaimed
        self._closing = True
        wire.hang_up(self._conn)
        with self._cv:
            self._cv.notify_all()
            self._idle.notify_all()
        if threading.current_thread() is not self._reader:
            self._reader.join(5)

    # -- leases of this process's threads ------------------------------------------------

    def _lent(self, pool: RemotePool, lease_id: str) -> None:
        holder = holders.current_holder()
        with self._cv:
            self._borrower[lease_id] = holder
            self._borrowed.setdefault(holder, {})[lease_id] = pool

    def _returned(self, lease_id: str) -> None:
        with self._cv:
            holder = self._borrower.pop(lease_id, None)
            held = None if holder is None else self._borrowed.get(holder)
            if holder is not None and held is not None:
                held.pop(lease_id, None)
                if not held:
                    del self._borrowed[holder]

    def _thread_gone(self, holder: str) -> None:
        """A thread of this process ended holding leases: they go back to their pools.

        In-process pools reclaim a dead thread's leases on their own; across processes
        the runtime only sees the worker, so the worker gives them back for it.
        """
        with self._cv:
            held = self._borrowed.pop(holder, None)
            for lease_id in held or ():
                self._borrower.pop(lease_id, None)
        for lease_id, pool in (held or {}).items():
            with contextlib.suppress(LessorError):
                pool.give_back_for_dead_thread(lease_id)

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self._conn.send_bytes(data)
            except (OSError, TypeError) as exc:
                raise ActorStopped("the runtime is gone") from exc

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
                    if not self._read_one(conn, 0):
                        return
                elif clock() >= end:
                    break
            self._spin.observed(waiter.done, clock() - began)
        while not waiter.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read_one(conn, remaining):
                return

    def _read_one(self, conn: Connection, wait: float) -> bool:
        """Read and dispatch one frame if one comes within ``wait``; False if the link died."""
        try:
            if not self._poller.poll(_ms(wait)):
                return True
            data = conn.recv_bytes(wire.MAX_FRAME)
        except (EOFError, OSError, TypeError):  # TypeError: closed under our feet
            self._lost()
            return False
        try:
            kind, corr, _, message = wire.parse(data)
        except wire.FrameError as exc:  # an answer we cannot read still ends its wait
            log.warning("client: a malformed frame from the runtime", exc_info=True)
            if exc.kind in (Kind.REPLY, Kind.ERROR):
                self._answer(Kind.ERROR, exc.corr, None, exc)
            return True
        except ProtocolError:
            log.warning("client: a malformed frame from the runtime", exc_info=True)
            return True
        if kind in (Kind.REPLY, Kind.ERROR):
            self._answer(kind, corr, message)
        elif kind == Kind.PUSH and message is not None:
            self._push(message)
        return True

    def _answer(
        self, kind: Kind, corr: int, message: Message | None, error: LessorError | None = None
    ) -> None:
        waiter = self._pending.pop(corr, None)
        if waiter is None:  # the last frame of a request its caller gave up on
            gone = self._cancelled.pop(corr, None)
            if gone is not None and kind == Kind.REPLY:
                self._give_back(gone, message)
            return
        if kind == Kind.ERROR:
            waiter.error = error or (_error(message) if isinstance(message, ErrorReply)
                                     else ProtocolError("a malformed error reply"))  # fmt: skip
        else:
            waiter.value = message
        try:
            waiter.claim.pop()
        except IndexError:  # its caller gave up at this very moment
            if kind == Kind.REPLY:
                self._give_back(waiter, message)
            return
        waiter.done = True
        if self._following:
            with self._cv:
                self._cv.notify_all()

    def read_pushes(self) -> None:
        """Read whatever has arrived, if no other thread is reading: it costs one poll.

        A worker busy in a loop of cached pairs asks the pool nothing, so nobody would
        read a ReturnParked until the background reader's next turn.
        """
        if self._read_lock.acquire(blocking=False):  # the poll object is the reader's
            try:
                while self._poller.poll(0) and self._read_one(self._conn, 0):
                    pass
            finally:
                self._read_lock.release()
                if self._following:
                    with self._cv:
                        self._cv.notify_all()

    def _background(self) -> None:
        """Read while nobody is asking: pushes, and the runtime hanging up."""
        idle = self._idle
        while not self._closing and not self._lost_done:
            with idle:
                while not self._closing and (
                    self._active or time.monotonic() - self._last_active < IDLE_BEFORE_READING
                ):
                    idle.wait(IDLE_BEFORE_READING)
            if self._closing or not self._read_lock.acquire(timeout=0.05):
                continue
            try:
                if not self._active:
                    self._read_one(self._conn, IDLE_BEFORE_READING)
            finally:
                self._read_lock.release()
                if self._following:
                    with self._cv:
                        self._cv.notify_all()

    def _push(self, message: Message) -> None:
        if isinstance(message, LeaseExpired):
            self._returned(message.lease_id)  # the pool took it back: no thread holds it
        if isinstance(message, Drain):
            self.drain_deadline_s = message.deadline_s
            self.draining.set()
        for handler in list(self._handlers):
            try:
                handler(message)
            except Exception:
                log.exception("client: push handler failed")

    def _lost(self) -> None:
        with self._cv:
            if self._lost_done:
                return
            self._lost_done = True
            gone = ActorStopped("the runtime is gone")
            for waiter in self._pending.values():
                waiter.error = gone  # (before the claim: an asker that loses it reads this)
                with contextlib.suppress(IndexError):
                    waiter.claim.pop()
                    waiter.done = True
            self._pending.clear()
            self._cancelled.clear()
            self._cv.notify_all()
            self._idle.notify_all()
        if not self._closing:
            log.warning("client: connection to the runtime lost; this worker exits")
            self.on_lost()


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


_client: Client | None = None
_client_lock = threading.Lock()


def connect() -> Client:
    """This worker's client, made from the environment its runtime set (once per process)."""
    global _client  # noqa: PLW0603 - one connection per process, by design
    with _client_lock:
        if _client is None or _client._closing:
            try:
                address, key = os.environ[ENV_ADDRESS], os.environ[ENV_AUTHKEY]
            except KeyError:
                raise LessorError(
                    "lessor.connect() works in worker processes started by a Runtime"
                ) from None
            _client = Client(address, bytes.fromhex(key), os.environ.get(ENV_WORKER, "?"))
        return _client
