"""The worker's side of the handshake with its runtime's node, and the errors it reads."""

from __future__ import annotations

import os
import time
from multiprocessing import connection as mpc
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

from lessor import errors
from lessor.errors import LessorError, ProtocolError
from lessor.protocol import wire
from lessor.protocol.messages import ErrorReply, Hello
from lessor.protocol.wire import Kind
from lessor.transport.node import HANDSHAKE_TIMEOUT

__all__ = ["error_from_reply", "open_connection"]


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


def error_from_reply(reply: ErrorReply) -> LessorError:
    """The lessor error an ERROR frame names (LessorError if it names none we know)."""
    cls = getattr(errors, reply.error, None)
    if not (isinstance(cls, type) and issubclass(cls, LessorError)):
        cls = LessorError
    return cls(reply.text)
