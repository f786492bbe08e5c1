"""Frames between a runtime and its worker processes: envelopes around messages.

A frame is the msgpack array ``[kind, corr, target, [tag, field, ...]]``: ``corr``
matches a reply to its request (replies may come back in any order), ``target``
names the actor a request is for, and the message travels in its codec form. The
message part is ``None`` for frames that carry none (a CANCEL). Every frame is one
``send_bytes``; nothing is ever pickled.

A connection opens with the worker's HELLO (before any authentication, so it is
read with a size bound and a deadline: :class:`Deadline`), then both sides prove
they hold that worker's key (``multiprocessing``'s challenges), then the node
answers HELLO or ERROR.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import Any

from lessor.errors import ProtocolError
from lessor.protocol.messages import Message, from_parts, pack, to_parts, unpack
from lessor.protocol.values import packb as _packb

__all__ = [
    "MAX_FRAME",
    "MAX_HELLO",
    "PROTOCOL_VERSION",
    "Deadline",
    "FrameError",
    "Kind",
    "frame",
    "hang_up",
    "parse",
    "shut",
]

#: 2: Lease.contended. 3: HELLO before the challenge, per-worker keys, Describe/PoolInfo.
#: 4: typed values (msgpack ext types), chunked map Tasks, TaskResult error detail, pool Wait/Ready.
#: 5: PoolStats histograms and reclaims by why; GetStatus/Status for control peers.
PROTOCOL_VERSION = 5
#: Larger frames are refused and their connection closed (the stream cannot be resynced).
MAX_FRAME = 1 << 20
#: The HELLO frame is read before authentication: it must be small.
MAX_HELLO = 1024


class Kind(IntEnum):
    HELLO = 0
    ASK = 1
    TELL = 2
    REPLY = 3
    ERROR = 4
    PUSH = 5
    CANCEL = 6


_KIND_OF = {int(k): k for k in Kind}


class FrameError(ProtocolError):
    """A frame whose envelope was read but whose message is bad: answer ``corr`` with it."""

    def __init__(self, text: str, kind: Kind, corr: int) -> None:
        super().__init__(text)
        self.kind = kind
        self.corr = corr


def shut(conn: Connection) -> None:
    """Wake every thread blocked reading or writing ``conn``; its owner still closes it.

    Closing the descriptor alone does not interrupt a blocked ``recv`` on Linux (and
    closing it under another thread's feet lets the number be reused); shutting the
    socket down does, and leaves the descriptor to the thread that reads it.
    """
    with contextlib.suppress(OSError, ValueError, TypeError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def hang_up(conn: Connection) -> None:
    """Shut a connection down (see :func:`shut`) and close it."""
    shut(conn)
    with contextlib.suppress(OSError):
        conn.close()


class Deadline:
    """A connection's ``recv_bytes``/``send_bytes`` that give up at ``deadline``.

    For the handshake: ``multiprocessing``'s challenge functions read with no
    timeout, and a peer that sends nothing (or half a frame, or a byte at a time)
    must not hold a thread past the deadline. Reads poll before every ``read``.
    """

    def __init__(self, conn: Connection, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self._fd = conn.fileno()
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def send_bytes(self, data: bytes) -> None:
        self.conn.send_bytes(data)  # handshake frames are tiny: the socket buffer takes them

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        (size,) = struct.unpack("!i", self._read(4))
        if size == -1:
            (size,) = struct.unpack("!Q", self._read(8))
        if size < 0 or (maxlength is not None and size > maxlength):
            raise OSError("bad message length")
        return self._read(size)

    def _read(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            left = self.deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(int(min(left, 3600.0) * 1000) + 1):
                raise TimeoutError("the handshake did not finish in time")
            chunk = os.read(self._fd, size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return bytes(data)


def frame(kind: Kind, corr: int, target: str, message: Message | None) -> bytes:
    """Build one frame; a message holding a value that cannot travel (docs/values.md), or
    that makes a frame over ``MAX_FRAME`` (the other end would close the connection),
    raises ProtocolError."""
    parts = None if message is None else to_parts(message)
    try:  # (int(kind): values travel with their exact types, and Kind is an IntEnum)
        data = _packb([int(kind), corr, target, parts])
    except (TypeError, ValueError, OverflowError):
        # Say which message (and why) the same way the codec does.
        data = pack([int(kind), corr, target, parts], type(message).__name__)
    if len(data) > MAX_FRAME:
        raise ProtocolError(
            f"a {type(message).__name__} frame of {len(data)} bytes is over the "
            f"{MAX_FRAME}-byte limit"
        )
    return data


def parse(data: bytes) -> tuple[Kind, int, str, Message | None]:
    """Read one frame; anything malformed raises ProtocolError.

    The envelope is read first: a frame whose message part is bad raises
    :class:`FrameError`, which says which request (``corr``) to answer.
    """
    obj: Any = unpack(data)
    if type(obj) is not list or len(obj) != 4:
        raise ProtocolError("a frame is [kind, corr, target, message]")
    kind, corr, target, parts = obj
    known = _KIND_OF.get(kind) if type(kind) is int else None
    if known is None:
        raise ProtocolError(f"unknown frame kind {kind!r}")
    if type(corr) is not int or type(target) is not str:
        raise ProtocolError("frame corr must be an int and target a str")
    if parts is None:
        return known, corr, target, None
    try:
        return known, corr, target, from_parts(parts)
    except ProtocolError as exc:
        raise FrameError(str(exc), known, corr) from exc
