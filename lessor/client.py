"""Client: a worker process's connection to its runtime.

One connection per process, shared by all its threads (and its pykka actors).
Requests carry a correlation id, so replies may come back in any order and a
waiting Acquire never holds up another thread's Release. One reader thread takes
every frame: replies go to their waiting callers, pushes (``Drain``,
``LeaseExpired``) to the client's handlers. If the runtime goes away, pending
requests fail and the worker is asked to exit (SIGTERM to itself).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing import connection as mpc
from typing import Any

import pykka
from pykka import ThreadingFuture

from lessor import errors, wire
from lessor.errors import AcquireTimeout, ActorStopped, LessorError, ProtocolError
from lessor.leases import LeaseOps
from lessor.messages import Acquire, Drain, ErrorReply, Hello, Message
from lessor.node import ENV_ADDRESS, ENV_AUTHKEY, ENV_WORKER
from lessor.wire import Kind

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


class Client:
    """A worker's connection. Thread-safe; ``lessor.connect()`` returns the process's one."""

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
        self._pending: dict[int, ThreadingFuture[Any]] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self.draining = threading.Event()
        self.drain_deadline_s: float | None = None
        self._handlers: list[Callable[[Message], None]] = []
        self.on_lost: Callable[[], None] = _terminate_self
        self._reader = threading.Thread(target=self._read, name="lessor-client", daemon=True)
        self._reader.start()

    # -- requests ----------------------------------------------------------------------

    def ask(self, target: str, message: Message, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = REQUEST_TIMEOUT
        corr = next(self._ids)
        future: ThreadingFuture[Any] = ThreadingFuture()
        self._pending[corr] = future
        self._send(wire.frame(Kind.ASK, corr, target, message))
        try:
            return future.get(timeout=timeout)
        except pykka.Timeout:
            self._pending.pop(corr, None)
            with contextlib.suppress(LessorError):
                self._send(wire.frame(Kind.CANCEL, corr, target, None))
            if isinstance(message, Acquire):
                raise AcquireTimeout(f"runtime did not answer in {timeout:g}s") from None
            raise LessorError(f"runtime did not answer in {timeout:g}s") from None

    def tell(self, target: str, message: Message) -> None:
        self._send(wire.frame(Kind.TELL, 0, target, message))

    def pool(self, name: str) -> RemotePool:
        return RemotePool(self, name)

    def on_push(self, handler: Callable[[Message], None]) -> None:
        """Call ``handler(message)`` on the reader thread for every push (Drain, LeaseExpired)."""
        self._handlers.append(handler)

    def close(self) -> None:
        self._closing = True
        wire.hang_up(self._conn)
        if threading.current_thread() is not self._reader:
            self._reader.join(5)

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self._conn.send_bytes(data)
            except OSError as exc:
                raise ActorStopped("the runtime is gone") from exc

    # -- the reader --------------------------------------------------------------------

    def _read(self) -> None:
        conn = self._conn
        while True:
            try:
                data = conn.recv_bytes(wire.MAX_FRAME)
                kind, corr, _, message = wire.parse(data)
            except (EOFError, OSError, TypeError):  # TypeError: closed under our feet
                break
            except ProtocolError:
                log.warning("client: a malformed frame from the runtime", exc_info=True)
                continue
            if kind in (Kind.REPLY, Kind.ERROR):
                future = self._pending.pop(corr, None)
                if future is None:
                    continue
                if kind == Kind.ERROR and isinstance(message, ErrorReply):
                    exc = _error(message)
                    future.set_exception((type(exc), exc, None))
                else:
                    future.set(message)
            elif kind == Kind.PUSH and message is not None:
                self._push(message)
        self._lost()

    def _push(self, message: Message) -> None:
        if isinstance(message, Drain):
            self.drain_deadline_s = message.deadline_s
            self.draining.set()
        for handler in list(self._handlers):
            try:
                handler(message)
            except Exception:
                log.exception("client: push handler failed")

    def _lost(self) -> None:
        gone = ActorStopped("the runtime is gone")
        for future in list(self._pending.values()):
            with contextlib.suppress(Exception):
                future.set_exception((ActorStopped, gone, None))
        self._pending.clear()
        if not self._closing:
            log.warning("client: connection to the runtime lost; this worker exits")
            self.on_lost()


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class RemotePool(LeaseOps):
    """A pool in the runtime, seen from a worker: the same API as an in-process handle."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        if timeout is None and isinstance(message, Acquire):
            timeout = (message.timeout or DEFAULT_ACQUIRE_TIMEOUT) + ACQUIRE_GRACE
        return self.client.ask(self.name, message, timeout)

    def tell(self, message: Message) -> None:
        self.client.tell(self.name, message)


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
