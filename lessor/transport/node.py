"""Node: the runtime's end of the worker connections.

A Unix socket in a private 0700 directory, one reader thread per connection.
Requests are routed by target name to registered targets (pool handles, map jobs);
the node knows nothing of pools. A malformed frame gets an error reply (on its own
correlation id when the envelope was readable), an oversized one closes its
connection; either way the node keeps serving everyone else. Nothing is unpickled:
frames are read with ``recv_bytes`` and decoded by the message codec.

The node, not the worker, decides who a connection is. Each worker gets its own
key, ``HMAC-SHA256(runtime key, worker id)``, in its environment (:meth:`Node.env`),
so one worker's secret opens no other identity; the holder id carries the pid the
kernel reports for the socket's peer (``SO_PEERCRED``), which must match the pid the
supervisor bound (:meth:`Node.bind_pid`); and a second connection under a live
identity is refused, never swapped in. The handshake has a deadline, and
``close()`` hangs up every connection, authenticated or not, against one deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import socket
import struct
import tempfile
import threading
import time
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
from lessor.errors import LessorError, NoSuchPool, ProtocolError
from lessor.holder import Holder
from lessor.protocol import wire
from lessor.protocol.messages import ErrorReply, Hello, Message
from lessor.protocol.wire import Kind
from lessor.transport.peer import Peer, WireReply

__all__ = ["CONTROL", "ENV_ADDRESS", "ENV_AUTHKEY", "ENV_WORKER", "HANDSHAKE_TIMEOUT", "Node",
           "Target"]  # fmt: skip

log = logging.getLogger("lessor.transport.node")

ENV_ADDRESS = "LESSOR_ADDRESS"
ENV_AUTHKEY = "LESSOR_AUTHKEY"
ENV_WORKER = "LESSOR_WORKER_ID"
#: Ids ``control/<anything>`` prove the control key and reach ``control:<name>`` targets.
CONTROL = "control"

#: Seconds a new connection has to say HELLO and pass both challenges.
HANDSHAKE_TIMEOUT = 5.0
#: Seconds ``close()`` waits, in all, for the node's threads to end.
CLOSE_TIMEOUT = 5.0
#: Seconds a push queued before its worker connected may wait for room in its socket.
PUSH_WAIT = 1.0


class Target(Protocol):
    """Something remote requests can be delivered to (a pool handle, a map job).

    ``deliver`` may raise LessorError (answered to the worker as an error). On a
    CANCEL frame for a request not yet answered, the node calls ``cancel(reply,
    holder)``: the target calls ``reply.cancel()`` and, if that returns False (a
    grant won the race), gives back ``reply.value``, which the worker will never see
    (see :class:`~lessor.transport.peer.WireReply`). A target that answers every request inside
    ``deliver`` (a map job) has nothing to do.
    """

    def deliver(self, message: Message, reply: Any, holder: Holder) -> None: ...

    def cancel(self, reply: Any, holder: Holder) -> None: ...


@dataclass
class NodeStats:
    connections: int = 0
    refused: int = 0
    bad_frames: int = 0
    closed_oversized: int = 0


class Node:
    """Accepts worker connections and routes their requests to registered targets."""

    def __init__(
        self, max_frame: int = wire.MAX_FRAME, handshake_timeout: float = HANDSHAKE_TIMEOUT
    ) -> None:
        self.authkey = secrets.token_bytes(32)  # never leaves this process: workers get HMACs
        self.max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self.stats = NodeStats()
        self._dir = tempfile.mkdtemp(prefix="lessor-")
        os.chmod(self._dir, 0o700)
        self.address = os.path.join(self._dir, "node.sock")
        self._listener = Listener(self.address, family="AF_UNIX", backlog=64)
        self._targets: dict[str, Target] = {}
        self._peers: dict[str, Peer] = {}
        self._known: set[str] = set()  # worker ids env() was asked for
        self._early: dict[str, list[Message]] = {}  # pushes for workers not connected yet
        self._pids: dict[str, int] = {}  # worker id -> the pid its supervisor started
        self._conns: set[Connection] = set()  # every open connection, authenticated or not
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
        """What a worker needs to connect; it travels in the worker's environment.

        The key is this worker's own: it proves this id, and no other.
        """
        with self._lock:
            self._known.add(worker_id)
        key = self._key(worker_id).hex()
        return {ENV_ADDRESS: self.address, ENV_AUTHKEY: key, ENV_WORKER: worker_id}

    def bind_pid(self, worker_id: str, pid: int) -> None:
        """The process that is ``worker_id`` (call right after starting it).

        From now on only a socket whose peer is that pid may connect as it; a
        connection made before the call by another process is hung up.
        """
        with self._lock:
            self._pids[worker_id] = pid
            peer = self._peers.get(worker_id)
            if peer is not None and peer.pid != pid:
                log.warning("node: %s is not worker %s's process; hanging up", peer.holder,
                            worker_id)  # fmt: skip
                wire.shut(peer.conn)

    def workers(self) -> dict[str, int]:
        """{worker id: pid} of every worker started and not yet known to have exited."""
        with self._lock:
            return dict(self._pids)

    def push(self, worker_id: str, message: Message, wait: float = 0.0) -> bool:
        """Push ``message`` to a worker, waiting up to ``wait`` s for room in its socket.

        A worker that was given its environment but has not connected yet gets the
        push as soon as it does (a Drain must reach a worker that is still starting).
        """
        with self._lock:
            peer = self._peers.get(worker_id)
            if peer is None:
                if worker_id not in self._known:
                    return False
                self._early.setdefault(worker_id, []).append(message)
                return True
        peer.tell(message, wait)
        return True

    def broadcast(self, message: Message) -> None:
        with self._lock:
            peers = list(self._peers.values())
        for peer in peers:
            peer.tell(message)

    def disconnect(self, worker_id: str) -> None:
        """Drop a worker's connection (its process died): its holder is gone at once.

        The id is retired: nothing can connect as it again.
        """
        with self._lock:
            self._known.discard(worker_id)
            self._early.pop(worker_id, None)
            self._pids.pop(worker_id, None)
            peer = self._peers.get(worker_id)
            if peer is not None:
                wire.shut(peer.conn)  # its reader wakes, closes it and reports the holder gone

    def close(self) -> None:
        deadline = time.monotonic() + CLOSE_TIMEOUT
        with self._lock:
            if self._closed:
                return
            self._closed = True  # from here no connection is added
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as knock:
            knock.connect(self.address)  # wakes accept(), which then sees _closed
        self._accepting.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:  # a connection leaves _conns before its reader closes it
            for conn in self._conns:
                wire.shut(conn)
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- connections -------------------------------------------------------------------

    def _key(self, worker_id: str) -> bytes:
        return hmac.new(self.authkey, worker_id.encode(), hashlib.sha256).digest()

    def control_key(self) -> bytes:
        """The key of every ``control/...`` id: it reaches ``control:`` targets only."""
        return self._key(CONTROL)

    def _key_for(self, worker_id: str) -> bytes:
        if worker_id.startswith(f"{CONTROL}/"):
            return self.control_key()
        with self._lock:
            known = worker_id in self._known
        # An unknown id meets a key nobody has: it fails like a wrong key.
        return self._key(worker_id) if known else secrets.token_bytes(32)

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                log.warning("node: accept failed", exc_info=True)
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), name="lessor-node-peer",
                                      daemon=True)  # fmt: skip
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: Connection) -> None:
        peer: Peer | None = None
        try:
            peer = self._handshake(conn)
            if peer is not None:
                self._read(peer)
        finally:
            with self._lock:
                self._conns.discard(conn)
                if peer is not None and self._peers.get(peer.worker_id) is peer:
                    del self._peers[peer.worker_id]
            if peer is not None:
                peer.close()
                holders.report_gone(peer.holder)  # pools reclaim its leases, drop its waiters
            else:
                with contextlib.suppress(OSError):
                    conn.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _refuse(self, conn: Connection, why: str, answer: bool) -> None:
        self.stats.refused += 1
        log.warning("node: refused a connection: %s", why)
        if answer:  # only to a peer that proved its key
            with contextlib.suppress(OSError, ProtocolError):
                conn.send_bytes(wire.frame(Kind.ERROR, 0, "", ErrorReply("ProtocolError", why)))

    def _handshake(self, conn: Connection) -> Peer | None:
        timed = wire.Deadline(conn, time.monotonic() + self.handshake_timeout)
        try:
            kind, _, _, hello = wire.parse(timed.recv_bytes(wire.MAX_HELLO))
            if kind != Kind.HELLO or not isinstance(hello, Hello):
                raise ProtocolError("a connection must open with HELLO")
            key = self._key_for(hello.worker_id)
            deliver_challenge(timed, key)  # type: ignore[arg-type]
            answer_challenge(timed, key)  # type: ignore[arg-type]
            pid, uid = _peer_credentials(conn, hello.pid)
        except (AuthenticationError, EOFError, OSError, ProtocolError, AssertionError) as exc:
            self._refuse(conn, f"{type(exc).__name__}: {exc}"[:200], answer=False)
            return None
        with self._lock:
            why = self._refusal(hello, pid, uid)
            peer = None if why else Peer(conn, hello.worker_id, pid)  # sends wait for greet
            if peer is not None:
                self._peers[peer.worker_id] = peer
                self.stats.connections += 1
                early = self._early.pop(peer.worker_id, [])
        if peer is None:
            self._refuse(conn, why, answer=True)
            return None
        peer.greet(wire.frame(Kind.HELLO, 0, "", Hello(wire.PROTOCOL_VERSION, "", os.getpid())))
        holders.bind_receiver(peer.holder, peer)
        for message in early:  # pushed before it connected (a Drain while it started)
            peer.tell(message, PUSH_WAIT)
        return peer

    def _refusal(self, hello: Hello, pid: int, uid: int) -> str:
        """Why an authenticated connection may not be ``hello.worker_id`` ("" if it may)."""
        worker_id = hello.worker_id
        if hello.version != wire.PROTOCOL_VERSION:
            return f"protocol version {hello.version}, this node speaks {wire.PROTOCOL_VERSION}"
        if uid != os.geteuid():
            return f"worker {worker_id!r} runs as another user"
        if self._pids.get(worker_id, pid) != pid:
            return f"worker {worker_id!r} is pid {self._pids[worker_id]}, not {pid}"
        if worker_id in self._peers:
            return f"worker {worker_id!r} is already connected"
        if self._closed:
            return "the runtime is closing"
        return ""

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
                peer.error(exc.corr if isinstance(exc, wire.FrameError) else 0, exc)
                continue
            self._dispatch(peer, kind, corr, name, message)

    def _dispatch(
        self, peer: Peer, kind: Kind, corr: int, name: str, message: Message | None
    ) -> None:
        target = self._targets.get(name)
        if kind == Kind.CANCEL:
            self._cancel(peer, corr, target)
            return
        if kind not in (Kind.ASK, Kind.TELL) or message is None:
            self.stats.bad_frames += 1
            peer.error(corr, ProtocolError(f"a worker may not send {kind.name} frames here"))
            return
        if name.startswith(f"{CONTROL}:") != peer.worker_id.startswith(f"{CONTROL}/"):
            target = None  # a control peer only reads; a worker never reaches control
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
                reply.set_exception((type(exc), exc, None))
            else:
                log.warning(
                    "node: %s from %s refused: %s", type(message).__name__, peer.holder, exc
                )

    def _cancel(self, peer: Peer, corr: int, target: Target | None) -> None:
        """The worker gave up on ``corr``: after this, exactly one more frame has its corr.

        If the request was answered already, that answer is it (the worker gives a
        late Lease back itself). Otherwise the target decides (it may find a grant
        made meanwhile in ``reply.value`` and give it back), nothing is sent for the
        request any more, and this acknowledgement is the one frame.
        """
        reply = peer.pending.pop(corr, None)
        if reply is None:
            return
        if target is not None:
            try:
                target.cancel(reply, peer.holder)
            except Exception:
                log.exception("node: cancelling %s's request failed", peer.holder)
        reply.cancel()  # a target that did not claim it: a later answer is refused
        peer.send(wire.frame(Kind.ERROR, corr, "", ErrorReply("LessorError", "cancelled")))


def _peer_credentials(conn: Connection, claimed_pid: int) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel saw it connect."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # not Linux: trust what the (authenticated) worker said
        return claimed_pid, os.geteuid()
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
    return pid, uid
