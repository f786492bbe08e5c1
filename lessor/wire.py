"""Frames between a runtime and its worker processes: envelopes around messages.

A frame is the msgpack array ``[kind, corr, target, [tag, field, ...]]``: ``corr``
matches a reply to its request (replies may come back in any order), ``target``
names the actor a request is for, and the message travels in its codec form. The
message part is ``None`` for frames that carry none (a CANCEL). Every frame is one
``send_bytes``; nothing is ever pickled.
"""

from __future__ import annotations

import contextlib
import os
import socket
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from lessor.errors import ProtocolError
from lessor.messages import Message, from_parts, pack, to_parts, unpack

__all__ = ["MAX_FRAME", "PROTOCOL_VERSION", "Kind", "frame", "hang_up", "parse"]

PROTOCOL_VERSION = 2  # 2: Lease.contended
#: Larger frames are refused and their connection closed (the stream cannot be resynced).
MAX_FRAME = 1 << 20


class Kind(IntEnum):
    HELLO = 0
    ASK = 1
    TELL = 2
    REPLY = 3
    ERROR = 4
    PUSH = 5
    CANCEL = 6


_KIND_OF = {int(k): k for k in Kind}
_packb = msgpack.packb


def hang_up(conn: Connection) -> None:
    """Close a connection so that a thread blocked reading it wakes up at once.

    Closing the descriptor alone does not interrupt a blocked ``recv`` on Linux;
    shutting the socket down does.
    """
    with contextlib.suppress(OSError, ValueError, TypeError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    with contextlib.suppress(OSError):
        conn.close()


def frame(kind: Kind, corr: int, target: str, message: Message | None) -> bytes:
    """Build one frame; a message that is not msgpack-safe raises ProtocolError."""
    parts = None if message is None else to_parts(message)
    try:
        data: bytes = _packb([int(kind), corr, target, parts], use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        # Say which message (and why) the same way the codec does.
        return pack([int(kind), corr, target, parts], type(message).__name__)
    return data


def parse(data: bytes) -> tuple[Kind, int, str, Message | None]:
    """Read one frame; anything malformed raises ProtocolError."""
    obj: Any = unpack(data)
    if type(obj) is not list or len(obj) != 4:
        raise ProtocolError("a frame is [kind, corr, target, message]")
    kind, corr, target, parts = obj
    known = _KIND_OF.get(kind) if type(kind) is int else None
    if known is None:
        raise ProtocolError(f"unknown frame kind {kind!r}")
    if type(corr) is not int or type(target) is not str:
        raise ProtocolError("frame corr must be an int and target a str")
    return known, corr, target, None if parts is None else from_parts(parts)
