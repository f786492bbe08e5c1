"""Where pool resources come from.

A factory makes and destroys resources; the optional hooks say how to test one on
borrow (``check``), clean one on release (``reset``), which errors in a holder's
block mean the resource is broken (``is_fatal``), what ends a block that went well
(``finish``: PostgreSQL commits there), and whether a reclaimed resource
may be reused (``reusable``: true for plain tokens, false for anything a holder that
lost its lease might still be touching), and how many resources it can make at all
(``capacity``), so that a pool that could never fill is refused where it is specified.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["CallableFactory", "Factory", "IdleClock", "TokenFactory", "capacity_of", "overrides"]

R = TypeVar("R")


class Factory(Generic[R]):
    """Subclass and implement ``create``; override the hooks you need."""

    #: A reclaimed (expired or orphaned) resource may go back to the idle list.
    reusable: bool = False
    #: Resources are plain msgpack-safe data that may be leased to worker processes.
    portable: bool = False
    #: How many resources the factory can have made at once (a fixed set of tokens, GPU
    #: ids, API keys); None (default) is no limit. ``PoolSpec`` refuses a ``max_size``
    #: above it, since such a pool would starve its waiters for good.
    capacity: int | None = None

    def create(self) -> R:
        raise NotImplementedError

    def destroy(self, resource: R) -> None:
        """Release whatever the resource holds. Errors are logged, never fatal."""

    def check(self, resource: R) -> bool:
        """Run before a borrow (off the actor thread); False destroys and replaces it."""
        return True

    def checks_on_borrow(self) -> bool:
        """Whether the pool calls ``check`` before each borrow (a step off the actor thread).

        By default, when ``check`` is overridden; a factory whose check is optional
        (PostgresFactory's ``check_idle_after``) says so here.
        """
        wrapped = getattr(self, "wrapped", None)
        if isinstance(wrapped, Factory):
            return wrapped.checks_on_borrow()
        return overrides(self, "check")

    def reset(self, resource: R) -> None:
        """Run after a release (off the actor thread); raising destroys the resource."""

    def is_fatal(self, exc: BaseException) -> bool:
        """An error in a ``lease()`` block that means the resource is broken."""
        return False

    def finish(self, resource: R) -> None:
        """Run when a ``lease()`` block ends without an error, on its thread, before the
        release; if it raises, so does the block (releasing as ``is_fatal`` says)."""


def overrides(factory: Factory[Any], hook: str) -> bool:
    """Whether a factory implements a hook, so the pool can skip a no-op round trip.

    A wrapper (``factory.wrapped``, as QuotaFactory) implements what it wraps does.
    """
    wrapped = getattr(factory, "wrapped", None)
    if isinstance(wrapped, Factory):
        return overrides(wrapped, hook)
    return getattr(type(factory), hook) is not getattr(Factory, hook)


def capacity_of(factory: Factory[Any]) -> int | None:
    """How many resources ``factory`` can make, None if unbounded; a wrapper (QuotaFactory)
    can make as many as what it wraps."""
    wrapped = getattr(factory, "wrapped", None)
    if isinstance(wrapped, Factory):
        return capacity_of(wrapped)
    return factory.capacity


class CallableFactory(Factory[R]):
    """A factory from plain callables, for pools that need no subclass."""

    def __init__(
        self,
        create: Callable[[], R],
        destroy: Callable[[R], None] | None = None,
        *,
        fatal: tuple[type[BaseException], ...] = (),
        reusable: bool = False,
        portable: bool = False,
    ) -> None:
        self._create = create
        self._destroy = destroy
        self._fatal = fatal
        self.reusable = reusable
        self.portable = portable

    def create(self) -> R:
        return self._create()

    def destroy(self, resource: R) -> None:
        if self._destroy is not None:
            self._destroy(resource)

    def is_fatal(self, exc: BaseException) -> bool:
        return isinstance(exc, self._fatal)


class TokenFactory(Factory[Any]):
    """Plain-data resources (slot numbers, GPU ids, ports, API keys), reusable after reclaim.

    With ``tokens`` the pool hands out exactly those values (its ``capacity`` is their
    number, and a ``PoolSpec`` with a larger ``max_size`` is refused); without, the
    integers 0, 1, 2, ... (no capacity limit).
    """

    reusable = True
    portable = True

    def __init__(self, tokens: Iterable[Any] | None = None) -> None:
        self._tokens: list[Any] | None = None if tokens is None else list(tokens)
        self.capacity = None if self._tokens is None else len(self._tokens)
        self._next = 0  # the next integer, without tokens
        self._free: list[Any] = []
        self._lock = threading.Lock()  # create/destroy run on several pool worker threads

    def __getstate__(self) -> dict[str, Any]:
        """Picklable, to travel with a spec (to a Ray node agent); the lock is made anew."""
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def create(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._tokens is None:
                self._next += 1
                return self._next - 1
            if not self._tokens:
                raise LookupError("TokenFactory ran out of tokens (max_size > number of tokens)")
            return self._tokens.pop(0)

    def destroy(self, resource: Any) -> None:
        with self._lock:
            self._free.append(resource)


class IdleClock:
    """When each resource was last given back, so a check can skip fresh ones.

    Thread-safe (factory hooks run on several pool threads) and picklable as empty:
    a factory that holds one can travel to a worker process with its settings only.
    """

    def __init__(self) -> None:
        self._returned: dict[int, float] = {}
        self._lock = threading.Lock()

    def mark(self, resource: object) -> None:
        with self._lock:
            self._returned[id(resource)] = time.monotonic()

    def idle_for(self, resource: object) -> float:
        with self._lock:
            return time.monotonic() - self._returned.get(id(resource), 0.0)

    def forget(self, resource: object) -> None:
        with self._lock:
            self._returned.pop(id(resource), None)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
