"""Control peers' messages (tags 40-44); import them from :mod:`lessor.protocol.messages`.

A control peer (``lessor top``, ``lessor status``) proves the runtime's control key,
kept in a 0600 file next to its socket, and may only ask the runtime's control
targets: it reads the runtime, it does not borrow from it (see
:mod:`lessor.transport.control`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lessor.protocol.codec import Message, message

__all__ = ["GetStatus", "Status"]


@message(40)
@dataclass(frozen=True, slots=True)
class GetStatus(Message):
    """Ask the runtime for a snapshot of itself (answered with :class:`Status`)."""


@message(41)
@dataclass(frozen=True, slots=True)
class Status(Message):
    """``RuntimeStatus.as_dict()``: see :class:`lessor.runtime.status.RuntimeStatus`."""

    body: dict[str, Any]
