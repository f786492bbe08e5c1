"""Notices an actor pushes to lease holders after its turn (GiveBack, Shed).

A holder that can be told things (a worker's connection, an in-process cache, a
process's own pool under a quota) registered a receiver
(:func:`lessor.holder.bind_receiver`); a holder without one is not told.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from lessor import holder as holders
from lessor.holder import Holder
from lessor.protocol.messages import Message

__all__ = ["push"]


def push(later: Callable[..., None], to: Iterable[Holder], notice: Message) -> None:
    """Have ``notice`` told to each of ``to`` once the turn is released (``later``): a
    send may be a socket's, and nothing is sent while an actor holds its turn."""
    for holder in to:
        receiver: Any = holders.holder_receiver(holder)
        if receiver is not None:
            later(receiver.tell, notice)
