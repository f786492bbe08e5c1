"""Client: a worker process's connection to its runtime.

One connection per process, shared by all its threads (and its pykka actors).
Requests carry a correlation id, so replies may come back in any order and a
waiting Acquire never holds up another thread's Release. Whichever thread reads
takes every frame: replies go to their waiting callers, pushes (``Drain``,
``LeaseExpired``, ``ReturnParked``) to the client's handlers. If the runtime goes
away, pending requests fail and the worker is asked to exit (SIGTERM to itself).
``client.pool(name)`` caches leases in the worker (see :class:`RemotePool`).
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
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from lessor import errors, wire
from lessor import holder as holders
from lessor.actors.pool import EvictIdle
from lessor.core.cache import LeaseCache
from lessor.errors import AcquireTimeout, ActorStopped, LessorError, ProtocolError
from lessor.leases import LeaseOps
from lessor.messages import (
    Acquire,
    Drain,
    ErrorReply,
    Hello,
    Lease,
    LeaseExpired,
    Message,
    Release,
    ReturnParked,
)
from lessor.node import ENV_ADDRESS, ENV_AUTHKEY, ENV_WORKER
from lessor.specs import PoolSpec
from lessor.wire import Kind

if TYPE_CHECKING:
    from lessor.handle import PoolHandle

__all__ = ["Client", "RemotePool", "connect"]

log = logging.getLogger("lessor.client")

#: How long past an Acquire's own timeout a worker waits for the runtime's answer.
ACQUIRE_GRACE = 5.0
REQUEST_TIMEOUT = 30.0
DEFAULT_ACQUIRE_TIMEOUT = 30.0


def _error(reply: ErrorReply) -> LessorError:
    cls = getattr(errors, reply.error, None)
    if not (isinstance(cls, type) and issubclass(cls, LessorError)):
        cls = LessorError
    return cls(reply.text)


class _Waiter:
    """One pending request: answered by whichever thread reads its reply."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


#: The background reader waits this long after the last request before it reads, so
#: that a thread asking in a loop reads its own replies (no thread hand-off).
IDLE_BEFORE_READING = 0.01


class SpinBudget:
    """How long a thread awaiting a reply polls before it sleeps, adapted as it goes.

    Sleeping in ``poll`` and being woken by the reply costs tens of µs per round trip
    on a VM; polling for the reply instead halves a round trip. Spinning only pays
    while replies come quickly and a core is free, so the budget is three times the
    typical quick reply (a moving average), and spinning stops while most spins miss
    (a pool that makes callers wait, other busy threads, more workers than cores),
    but for one probe every ``PROBE_EVERY`` requests to find out whether it pays again.
    """

    MIN = 10e-6
    MAX = 200e-6
    PROBE_EVERY = 64

    __slots__ = ("_misses", "_typical", "_until_probe", "budget")

    def __init__(self) -> None:
        self.budget = self.MAX
        self._typical = self.MAX / 3
        self._misses = 0.0  # moving share of spins that saw no reply
        self._until_probe = 0

    def observed(self, answered: bool, waited: float) -> None:
        hit = answered and waited <= self.budget
        self._misses += ((not hit) - self._misses) * 0.1
        if hit:
            self._typical += (waited - self._typical) * 0.2
        if self._misses > 0.5:
            self.budget = 0.0
            self._until_probe = self.PROBE_EVERY
        else:
            self.budget = min(self.MAX, max(self.MIN, 3 * self._typical))

    def skipped(self) -> None:
        """A request went by without spinning: after enough of them, probe once."""
        if self._until_probe:
            self._until_probe -= 1
            if not self._until_probe:
                self.budget = self.MAX  # a probe that can see a reply if one comes soon


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
        self._conn = mpc.Client(address, family="AF_UNIX", authkey=authkey)
        self._conn.send_bytes(
            wire.frame(Kind.HELLO, 0, "", Hello(wire.PROTOCOL_VERSION, worker_id, os.getpid()))
        )
        kind, _, _, answer = wire.parse(self._conn.recv_bytes(wire.MAX_FRAME))
        if kind != Kind.HELLO:
            text = answer.text if isinstance(answer, ErrorReply) else "no HELLO"
            raise ProtocolError(f"runtime refused the connection: {text}")
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._poller = select.poll()  # made once: conn.poll() builds a selector every call
        self._spin = SpinBudget()
        self._poller.register(self._conn.fileno(), select.POLLIN)
        self._cv = threading.Condition(threading.Lock())
        self._pending: dict[int, _Waiter] = {}
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
            timeout = REQUEST_TIMEOUT
        corr = next(self._ids)
        waiter = _Waiter()
        cv = self._cv
        with cv:
            if self._lost_done:
                raise ActorStopped("the runtime is gone")
            self._pending[corr] = waiter
            self._active += 1
        try:
            self._send(wire.frame(Kind.ASK, corr, target, message))
            deadline = time.monotonic() + timeout
            while not waiter.done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
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
                            cv.wait(min(remaining, 0.05))
                            self._following -= 1
        finally:
            with cv:  # the background reader notices on its own: waking it costs the caller
                self._active -= 1
                self._last_active = time.monotonic()
        if not waiter.done:
            self._pending.pop(corr, None)
            with contextlib.suppress(LessorError):
                self._send(wire.frame(Kind.CANCEL, corr, target, None))
            if isinstance(message, Acquire):
                raise AcquireTimeout(f"runtime did not answer in {timeout:g}s")
            raise LessorError(f"runtime did not answer in {timeout:g}s")
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

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
        from lessor.handle import start_pool
        from lessor.quota import local_spec

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
            if not self._poller.poll(max(0, int(wait * 1000) + 1)):
                return True
            data = conn.recv_bytes(wire.MAX_FRAME)
        except (EOFError, OSError, TypeError):  # TypeError: closed under our feet
            self._lost()
            return False
        try:
            kind, corr, _, message = wire.parse(data)
        except ProtocolError:
            log.warning("client: a malformed frame from the runtime", exc_info=True)
            return True
        if kind in (Kind.REPLY, Kind.ERROR):
            waiter = self._pending.pop(corr, None)
            if waiter is not None:
                if kind == Kind.ERROR and isinstance(message, ErrorReply):
                    waiter.error = _error(message)
                else:
                    waiter.value = message
                waiter.done = True
                if self._following:
                    with self._cv:
                        self._cv.notify_all()
        elif kind == Kind.PUSH and message is not None:
            self._push(message)
        return True

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
                waiter.error = gone
                waiter.done = True
            self._pending.clear()
            self._cv.notify_all()
            self._idle.notify_all()
        if not self._closing:
            log.warning("client: connection to the runtime lost; this worker exits")
            self.on_lost()


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class RemotePool(LeaseOps):
    """A pool in the runtime, seen from a worker: the same API as an in-process handle.

    With ``cache=True`` (the default of ``client.pool``) this is lock caching with
    recall, as distributed lock managers and HikariCP's ConcurrentBag do it: a
    released lease is parked in this process and the next ``acquire`` here reuses it
    without a round trip. The pool still counts it as leased by this worker. When
    someone else waits and nothing is free, the pool pushes ReturnParked: parked
    leases go back at once, leases out at that moment go back when released, and for
    a short window every release is real. Which releases park is
    :class:`~lessor.core.cache.LeaseCache`'s call; a stale lease released twice
    raises DoubleRelease rather than free a lease another borrow now holds.
    """

    def __init__(self, client: Client, name: str, cache: bool = False) -> None:
        self.client = client
        self.name = name
        self.cache = cache
        self._leases = LeaseCache(time.monotonic)
        self._lock = threading.Lock()
        if cache:
            client.on_push(self._on_push)

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        if timeout is None and isinstance(message, Acquire):
            timeout = (message.timeout or DEFAULT_ACQUIRE_TIMEOUT) + ACQUIRE_GRACE
        return self.client.ask(self.name, message, timeout)

    def tell(self, message: Message) -> None:
        self.client.tell(self.name, message)

    def acquire(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Lease:
        if not self.cache:
            lease = super().acquire(timeout, priority, ttl)
            self.client._lent(self, lease.id)
            return lease
        leases = self._leases
        with self._lock:
            reused = leases.take() if ttl is None else None
            if reused is None:
                leases.asking += 1
        if reused is not None:
            self.client._lent(self, reused.id)
            return reused
        try:
            lease = super().acquire(timeout, priority, ttl)
        except BaseException:
            with self._lock:
                leases.asking -= 1
            raise
        with self._lock:
            leases.asking -= 1
            leases.lent(lease)
        self.client._lent(self, lease.id)
        return lease

    def release(self, lease: Lease, broken: bool = False) -> None:
        if self.cache:
            self.client.read_pushes()  # a ReturnParked waiting to be read decides this one
            with self._lock:
                parked = self._leases.give_back(lease, broken, self.client.draining.is_set())
            self.client._returned(lease.id)
            if parked:
                return
        else:
            self.client._returned(lease.id)
        super().release(lease, broken)

    def give_back_for_dead_thread(self, lease_id: str) -> None:
        """The thread that borrowed this lease ended without releasing it."""
        if self.cache:
            with self._lock:
                self._leases.forget(lease_id)  # never parked: its user vanished mid-use
        self.tell(Release(lease_id))

    def renew(self, lease: Lease, ttl: float) -> Lease:
        if not self.cache:
            return super().renew(lease, ttl)
        with self._lock:
            self._leases.borrow(lease)  # a borrow that ended must not move another's expiry
        renewed = super().renew(lease, ttl)
        with self._lock:
            return self._leases.renewed(renewed)

    def flush(self) -> None:
        """Give every parked lease back to the pool."""
        with self._lock:
            parked = self._leases.empty()
        self._give(parked)

    @property
    def parked(self) -> int:
        return self._leases.parked

    def _give(self, leases: list[Lease]) -> None:
        for lease in leases:
            super().release(lease)

    def _on_push(self, message: Message) -> None:
        if isinstance(message, ReturnParked) and message.pool == self.name:
            with self._lock:
                parked = self._leases.recall()
            self._give(parked)
        elif isinstance(message, Drain):
            self.flush()
        elif isinstance(message, LeaseExpired) and message.pool == self.name:
            with self._lock:
                self._leases.forget(message.lease_id)


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
