"""Who holds a lease, and how the pool learns that a holder is gone.

A holder id comes from where a request is sent (the envelope), never from the
message, so one thread cannot claim another's lease by naming it. Each thread
that talks to a pool gets a unique id (``thread:<pid>:<ident>:<n>``; ``n`` keeps
it unique when the OS reuses a thread ident), a supervised actor holds as
``actor:<urn>``, a worker process's connection as ``worker:<worker id>:<pid>``,
an in-process lease cache as ``cache:<pid>:<n>``.
A sentinel kept in thread-local storage is freed when the thread ends, and its
finalizer tells every listening pool at once: holder death is noticed by the
runtime, not by polling or a heartbeat.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Literal, get_args

__all__ = [
    "ANONYMOUS",
    "Holder",
    "HolderKind",
    "bind_actor",
    "bind_receiver",
    "current_holder",
    "holder_receiver",
    "report_gone",
    "subscribe",
    "unsubscribe",
]

HolderKind = Literal["thread", "actor", "worker", "cache", "watcher", "anonymous"]
_KINDS: frozenset[str] = frozenset(get_args(HolderKind))


class Holder(str):
    """A holder id: its text is ``"<kind>:<id>"`` (``"anonymous"`` for ANONYMOUS).

    A ``str`` subclass because the id crosses the wire as text (``Lease.holder``)
    and is compared and hashed as text: a Holder equals, and finds dict entries
    keyed by, the plain string that came back. ``kind`` and ``id`` are set when it
    is made, so deciding by kind (only ``"worker"`` and ``"cache"`` holders keep
    leases they can give back) never reads the text. Immutable, like the string it is.
    """

    kind: HolderKind
    id: str

    def __new__(cls, kind: HolderKind, id: str) -> Holder:
        if kind not in _KINDS:
            raise ValueError(f"holder kind must be one of {sorted(_KINDS)}, not {kind!r}")
        if (kind == "anonymous") != (id == ""):
            raise ValueError(f"a {kind} holder needs {'no' if id else 'an'} id, got {id!r}")
        self = super().__new__(cls, kind if kind == "anonymous" else f"{kind}:{id}")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "id", id)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Holder is immutable: cannot set {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # str's own would rebuild it from its text
        return (Holder, (self.kind, self.id))

    @classmethod
    def thread(cls, pid: int, ident: int, serial: int) -> Holder:
        """A thread of process ``pid``; ``serial`` tells apart threads that reuse an ident."""
        return cls("thread", f"{pid}:{ident}:{serial}")

    @classmethod
    def actor(cls, urn: str) -> Holder:
        """A pykka actor (its ``actor_urn``): leases follow it, not the thread it runs on."""
        return cls("actor", urn)

    @classmethod
    def worker(cls, worker_id: str, pid: int) -> Holder:
        """A worker process's connection; it caches leases and gives them back when asked."""
        return cls("worker", f"{worker_id}:{pid}")

    @classmethod
    def cache(cls, id: str) -> Holder:
        """An in-process lease cache (``runtime.pool(name, cache=True)``): it lends what
        it holds to threads and, like a worker, gives leases back when asked."""
        return cls("cache", id)

    @classmethod
    def watcher(cls, id: str) -> Holder:
        """An in-process handle subscribed to an actor's pushes (a breaker's state)."""
        return cls("watcher", id)

    @property
    def gives_back(self) -> bool:
        """Whether this holder caches leases and returns them when a pool asks (AskBack)."""
        return self.kind in ("worker", "cache")

    @classmethod
    def parse(cls, text: str) -> Holder:
        """The Holder whose text is ``text``, for an id that came back as a plain string.

        Only where a holder is known by its text alone (``Lease.holder`` of a lease
        handed to a new pool incarnation); requests carry Holders.
        """
        if isinstance(text, Holder):
            return text
        if text == "anonymous":
            return ANONYMOUS
        kind, _, id_ = text.partition(":")
        if kind == "anonymous" or kind not in _KINDS or not id_:
            raise ValueError(f"not a holder id: {text!r}")
        return cls(kind, id_)  # type: ignore[arg-type]  # checked against _KINDS above


#: Holder of requests sent with a bare pykka ``ask``/``tell``, which carry no identity.
ANONYMOUS = Holder("anonymous", "")

_local = threading.local()
_numbers = itertools.count(1)
_lock = threading.Lock()
_listeners: list[Callable[[Holder], None]] = []
_receivers: dict[str, Any] = {}  # holder id -> something with tell(), for LeaseExpired


class _Sentinel:
    __slots__ = ("__weakref__",)


def report_gone(holder: Holder) -> None:
    """Tell every listening pool that ``holder`` is gone (a thread, actor or worker process)."""
    with _lock:
        listeners = list(_listeners)
        _receivers.pop(holder, None)
    for listener in listeners:
        with contextlib.suppress(Exception):  # a pool that already stopped
            listener(holder)


def _register(holder: Holder) -> Holder:
    sentinel = _Sentinel()
    _local.sentinel = sentinel
    _local.holder = holder
    weakref.finalize(sentinel, report_gone, holder)
    return holder


def current_holder() -> Holder:
    """The calling thread's holder (cached: it is on every request)."""
    try:
        return _local.holder  # type: ignore[no-any-return]
    except AttributeError:
        return _register(Holder.thread(os.getpid(), threading.get_ident(), next(_numbers)))


def bind_actor(actor_ref: Any) -> Holder:
    """Make the calling actor thread hold leases as ``actor:<urn>`` and get LeaseExpired.

    Supervised actors are bound automatically; call it in ``on_start`` of your own
    unsupervised pykka actors that borrow from pools.
    """
    holder = Holder.actor(actor_ref.actor_urn)
    bind_receiver(holder, actor_ref)
    return _register(holder)


def bind_receiver(holder: str, receiver: Any) -> None:
    """Route notices for ``holder`` (LeaseExpired) to ``receiver.tell``, until it is gone."""
    with _lock:
        _receivers[holder] = receiver


def holder_receiver(holder: str) -> Any | None:
    """Where notices for a holder go (an ActorRef, a worker connection), if anywhere."""
    return _receivers.get(holder)


def subscribe(listener: Callable[[Holder], None]) -> None:
    """Call ``listener(holder)`` whenever a holder thread or actor ends."""
    with _lock:
        _listeners.append(listener)


def unsubscribe(listener: Callable[[Holder], None]) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _forget() -> None:
    _local.__dict__.clear()


os.register_at_fork(after_in_child=_forget)  # a forked child is another holder
