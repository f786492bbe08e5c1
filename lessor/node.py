"""Node: the runtime's end of the worker connections.

A Unix socket in a private 0700 directory, a random authkey per runtime (never
logged), one reader thread per worker connection. Requests are routed by target
name to registered targets (pool handles, map jobs); the node knows nothing of
pools. A malformed frame gets an error reply, an oversized one closes its
connection; either way the node keeps serving everyone else. Nothing is unpickled:
frames are read with ``recv_bytes`` and decoded by the message codec.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import select
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)
from typing import Any, Protocol

from lessor import holder as holders
from lessor import wire
from lessor.errors import LessorError, NoSuchPool, ProtocolError
from lessor.messages import ErrorReply, Hello, Lease, Message, Release
from lessor.wire import Kind

__all__ = ["ENV_ADDRESS", "ENV_AUTHKEY", "ENV_WORKER", "Node", "Target"]

log = logging.getLogger("lessor.node")

ENV_ADDRESS = "LESSOR_ADDRESS"
ENV_AUTHKEY = "LESSOR_AUTHKEY"
ENV_WORKER = "LESSOR_WORKER_ID"


class Target(Protocol):
    """Something remote requests can be delivered to (a pool handle, a map job)."""

    def deliver(self, message: Message, reply: Any, holder: str) -> None: ...

    def cancel(self, reply: Any, holder: str) -> None: ...


@dataclass
class NodeStats:
    connections: int = 0
    refused: int = 0
    bad_frames: int = 0
    closed_oversized: int = 0


class Peer:
    """One worker connection. ``send`` is safe from any thread."""

    def __init__(self, conn: Connection, worker_id: str, pid: int) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.pid = pid
        self.holder = f"worker:{worker_id}:{pid}"
        self.pending: dict[int, WireReply] = {}
        self.closed = False
        self.dropped_pushes = 0
        self._lock = threading.Lock()
        self._writable = select.poll()
        self._writable.register(conn.fileno(), select.POLLOUT)

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

    def tell(self, message: Message) -> None:
        """Push a message the worker did not ask for (LeaseExpired, Drain, ReturnParked).

        Pushes are hints, sent from pool threads: to a worker that stopped reading
        (its socket buffer full) one is dropped rather than block the pool.
        """
        if not self._writable.poll(0):
            self.dropped_pushes += 1
            log.warning("node: %s is not reading; dropped a %s push", self.holder,
                        type(message).__name__)  # fmt: skip
            return
        self.send(wire.frame(Kind.PUSH, 0, "", message))

    def error(self, corr: int, exc: BaseException) -> None:
        name = type(exc).__name__ if isinstance(exc, LessorError) else "LessorError"
        self.send(wire.frame(Kind.ERROR, corr, "", ErrorReply(name, str(exc))))


class WireReply:
    """The reply target of one remote ask: answers travel back as frames.

    A Lease that cannot be delivered (the worker is gone, or the resource is not
    msgpack-safe) is released on the spot so that it is never lost.
    """

    __slots__ = ("_value", "corr", "done", "peer", "target")

    def __init__(self, peer: Peer, corr: int, target: Target) -> None:
        self.peer = peer
        self.corr = corr
        self.target = target
        self.done = False
        self._value: Any = None

    def set(self, value: Any = None) -> None:
        if self.done:
            raise queue.Full
        self.done = True
        self._value = value
        self.peer.pending.pop(self.corr, None)
        try:
            data = wire.frame(
                Kind.REPLY, self.corr, "", value if isinstance(value, Message) else None
            )
        except ProtocolError as exc:
            self._give_back(value)
            self.peer.error(self.corr, exc)
            return
        if not self.peer.send(data):
            self._give_back(value)

    def set_exception(self, exc_info: Any = None) -> None:
        if self.done:
            raise queue.Full
        self.done = True
        self.peer.pending.pop(self.corr, None)
        self.peer.error(self.corr, exc_info[1])

    def get(self, timeout: float | None = None) -> Any:
        """What was answered (for a cancel that raced a grant)."""
        if not self.done:
            raise TimeoutError
        return self._value

    def _give_back(self, value: Any) -> None:
        if isinstance(value, Lease):
            with contextlib.suppress(LessorError):
                self.target.deliver(Release(value.id), None, self.peer.holder)


class Node:
    """Accepts worker connections and routes their requests to registered targets."""

    def __init__(self, max_frame: int = wire.MAX_FRAME) -> None:
        self.authkey = secrets.token_bytes(32)
        self.max_frame = max_frame
        self.stats = NodeStats()
        self._dir = tempfile.mkdtemp(prefix="lessor-")
        os.chmod(self._dir, 0o700)
        self.address = os.path.join(self._dir, "node.sock")
        self._listener = Listener(self.address, family="AF_UNIX", backlog=64)
        self._targets: dict[str, Target] = {}
        self._peers: dict[str, Peer] = {}
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._accepting = threading.Thread(target=self._accept, name="lessor-node", daemon=True)
        self._accepting.start()

    # -- what the runtime uses ---------------------------------------------------------

    def register(self, name: str, target: Target) -> None:
        with self._lock:
            self._targets[name] = target

    def unregister(self, name: str) -> None:
        with self._lock:
            self._targets.pop(name, None)

    def env(self, worker_id: str) -> dict[str, str]:
        """What a worker needs to connect; it travels in the worker's environment."""
        return {ENV_ADDRESS: self.address, ENV_AUTHKEY: self.authkey.hex(), ENV_WORKER: worker_id}

    def push(self, worker_id: str, message: Message) -> bool:
        peer = self._peers.get(worker_id)
        if peer is None:
            return False
        peer.tell(message)
        return True

    def broadcast(self, message: Message) -> None:
        with self._lock:
            peers = list(self._peers.values())
        for peer in peers:
            peer.tell(message)

    def disconnect(self, worker_id: str) -> None:
        """Drop a worker's connection (its process died): its holder is gone at once."""
        peer = self._peers.get(worker_id)
        if peer is not None:
            wire.hang_up(peer.conn)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            peers = list(self._peers.values())
            threads = list(self._threads)
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as knock:
            knock.connect(self.address)  # wakes accept(), which then sees _closed
        self._accepting.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        for peer in peers:
            wire.hang_up(peer.conn)
        for thread in [self._accepting, *threads]:
            if thread is not threading.current_thread():
                thread.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- connections -------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                log.warning("node: accept failed", exc_info=True)
                continue
            if self._closed:
                conn.close()
                return
            thread = threading.Thread(target=self._serve, args=(conn,), name="lessor-node-peer",
                                      daemon=True)  # fmt: skip
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: Connection) -> None:
        peer: Peer | None = None
        try:
            peer = self._handshake(conn)
            if peer is not None:
                self._read(peer)
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            if peer is not None:
                self._drop(peer)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _handshake(self, conn: Connection) -> Peer | None:
        try:
            deliver_challenge(conn, self.authkey)
            answer_challenge(conn, self.authkey)
        except (AuthenticationError, EOFError, OSError) as exc:
            self.stats.refused += 1
            log.warning("node: refused a connection: %s", type(exc).__name__)
            return None
        try:
            kind, _, _, hello = wire.parse(conn.recv_bytes(self.max_frame))
            if kind != Kind.HELLO or not isinstance(hello, Hello):
                raise ProtocolError("a connection must open with HELLO")
            if hello.version != wire.PROTOCOL_VERSION:
                raise ProtocolError(
                    f"protocol version {hello.version}, this node speaks {wire.PROTOCOL_VERSION}"
                )
        except (ProtocolError, EOFError, OSError) as exc:
            self.stats.refused += 1
            log.warning("node: bad handshake: %s", exc)
            with contextlib.suppress(OSError, ProtocolError):
                conn.send_bytes(
                    wire.frame(Kind.ERROR, 0, "", ErrorReply("ProtocolError", str(exc)))
                )
            return None
        peer = Peer(conn, hello.worker_id, hello.pid)
        holders.bind_receiver(peer.holder, peer)
        with self._lock:
            self._peers[peer.worker_id] = peer
            self.stats.connections += 1
        peer.send(wire.frame(Kind.HELLO, 0, "", Hello(wire.PROTOCOL_VERSION, "", os.getpid())))
        return peer

    def _read(self, peer: Peer) -> None:
        conn = peer.conn
        while True:
            try:
                data = conn.recv_bytes(self.max_frame)
            except (EOFError, ConnectionError, TypeError):  # hung up, reset, or closed here
                return
            except OSError as exc:
                if not peer.closed and not self._closed:
                    self.stats.closed_oversized += 1
                    log.warning("node: %s sent an unreadable or oversized frame (%s); closing",
                                peer.holder, exc)  # fmt: skip
                return
            try:
                kind, corr, name, message = wire.parse(data)
            except ProtocolError as exc:
                self.stats.bad_frames += 1
                log.warning("node: bad frame from %s: %s", peer.holder, exc)
                peer.error(0, exc)
                continue
            self._dispatch(peer, kind, corr, name, message)

    def _dispatch(
        self, peer: Peer, kind: Kind, corr: int, name: str, message: Message | None
    ) -> None:
        target = self._targets.get(name)
        if kind == Kind.CANCEL:
            reply = peer.pending.get(corr)
            if reply is not None and target is not None:
                target.cancel(reply, peer.holder)
            return
        if kind not in (Kind.ASK, Kind.TELL) or message is None:
            self.stats.bad_frames += 1
            peer.error(corr, ProtocolError(f"a worker may not send {kind.name} frames here"))
            return
        if target is None:
            peer.error(corr, NoSuchPool(f"no pool or job named {name!r} in this runtime"))
            return
        reply = None
        if kind == Kind.ASK:
            reply = WireReply(peer, corr, target)
            peer.pending[corr] = reply
        try:
            target.deliver(message, reply, peer.holder)
        except LessorError as exc:
            if reply is not None:
                with contextlib.suppress(queue.Full):
                    reply.set_exception((type(exc), exc, None))
            else:
                log.warning(
                    "node: %s from %s refused: %s", type(message).__name__, peer.holder, exc
                )

    def _drop(self, peer: Peer) -> None:
        peer.closed = True
        with self._lock:
            if self._peers.get(peer.worker_id) is peer:
                del self._peers[peer.worker_id]
        holders.report_gone(peer.holder)  # pools reclaim its leases and drop its waiters
