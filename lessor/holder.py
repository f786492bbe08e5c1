"""Who holds a lease, and how the pool learns that a holder is gone.

A holder id comes from where a request is sent (the envelope), never from the
message, so one thread cannot claim another's lease by naming it. Each thread
that talks to a pool gets a unique id (``thread:<pid>:<ident>:<n>``; ``n`` keeps
it unique when the OS reuses a thread ident) or, inside a supervised actor,
``actor:<urn>``. A sentinel kept in thread-local storage is freed when the thread
ends, and its finalizer tells every listening pool at once: holder death is
noticed by the runtime, not by polling or a heartbeat.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = [
    "ANONYMOUS",
    "bind_actor",
    "bind_receiver",
    "current_holder",
    "holder_receiver",
    "report_gone",
    "subscribe",
    "unsubscribe",
]

#: Holder of requests sent with a bare pykka ``ask``/``tell``, which carry no identity.
ANONYMOUS = "anonymous"

_local = threading.local()
_numbers = itertools.count(1)
_lock = threading.Lock()
_listeners: list[Callable[[str], None]] = []
_receivers: dict[str, Any] = {}  # holder id -> something with tell(), for LeaseExpired


class _Sentinel:
    __slots__ = ("__weakref__",)


def report_gone(holder: str) -> None:
    """Tell every listening pool that ``holder`` is gone (a thread, actor or worker process)."""
    with _lock:
        listeners = list(_listeners)
        _receivers.pop(holder, None)
    for listener in listeners:
        with contextlib.suppress(Exception):  # a pool that already stopped
            listener(holder)


def _register(holder: str) -> str:
    sentinel = _Sentinel()
    _local.sentinel = sentinel
    _local.holder = holder
    weakref.finalize(sentinel, report_gone, holder)
    return holder


def current_holder() -> str:
    """The calling thread's holder id (cached: it is on every request)."""
    try:
        return _local.holder  # type: ignore[no-any-return]
    except AttributeError:
        ident = threading.get_ident()
        return _register(f"thread:{os.getpid()}:{ident}:{next(_numbers)}")


def bind_actor(actor_ref: Any) -> str:
    """Make the calling actor thread hold leases as ``actor:<urn>`` and get LeaseExpired.

    Supervised actors are bound automatically; call it in ``on_start`` of your own
    unsupervised pykka actors that borrow from pools.
    """
    holder = f"actor:{actor_ref.actor_urn}"
    bind_receiver(holder, actor_ref)
    return _register(holder)


def bind_receiver(holder: str, receiver: Any) -> None:
    """Route notices for ``holder`` (LeaseExpired) to ``receiver.tell``, until it is gone."""
    with _lock:
        _receivers[holder] = receiver


def holder_receiver(holder: str) -> Any | None:
    """Where notices for a holder go (an ActorRef, a worker connection), if anywhere."""
    return _receivers.get(holder)


def subscribe(listener: Callable[[str], None]) -> None:
    """Call ``listener(holder)`` whenever a holder thread or actor ends."""
    with _lock:
        _listeners.append(listener)


def unsubscribe(listener: Callable[[str], None]) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _forget() -> None:
    _local.__dict__.clear()


os.register_at_fork(after_in_child=_forget)  # a forked child is another holder
