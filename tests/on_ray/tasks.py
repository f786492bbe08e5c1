"""What the tests run inside Ray tasks (module-level: Ray's workers import it by name)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import ray

import lessor
from lessor.errors import LessorError


class Flags:
    """A Ray actor the driver and tasks meet at: named values, waited for with a deadline.

    ``set`` appends; ``wait(name, n)`` answers the n-th value set under ``name``.
    """

    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = {}
        self.changed = asyncio.Condition()

    async def set(self, name: str, value: Any = None) -> None:
        async with self.changed:
            self.values.setdefault(name, []).append(value)
            self.changed.notify_all()

    async def wait(self, name: str, n: int = 1, timeout: float = 60.0) -> Any:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: len(self.values.get(name, ())) >= n), timeout
            )
            return self.values[name][n - 1]


def node() -> str:
    return str(ray.get_runtime_context().get_node_id())


def hold(pool: str, low: float, high: float, seed: int) -> dict[str, Any]:
    """Lease one token of ``pool`` for a random time in [low, high) s: when, where, which."""
    pause = random.Random(seed).uniform(low, high)
    handle = lessor.connect().pool(pool)
    with handle.lease() as token:
        start = time.monotonic()
        time.sleep(pause)  # the hold itself: what overlaps is what is checked
        end = time.monotonic()
    return {"node": node(), "pid": os.getpid(), "token": token, "start": start, "end": end}


def hold_until(pool: str, flags: Any, name: str) -> dict[str, Any]:
    """Lease a token, say so (``<name>.held``: pid, lease id), give it back on ``<name>.go``."""
    handle = lessor.connect().pool(pool)
    lease = handle.acquire()
    ray.get(flags.set.remote(f"{name}.held", {"pid": os.getpid(), "lease": lease.id}))
    ray.get(flags.wait.remote(f"{name}.go", 1, 120.0))
    handle.release(lease)
    return {"pid": os.getpid(), "lease": lease.id}


def wait_grant(pool: str, timeout: float) -> dict[str, Any]:
    """Acquire (waiting up to ``timeout``): when it was granted, or the error's name."""
    handle = lessor.connect().pool(pool)
    try:
        lease = handle.acquire(timeout=timeout)
    except LessorError as exc:
        return {"error": type(exc).__name__, "at": time.monotonic()}
    granted = time.monotonic()
    handle.release(lease)
    return {"granted": granted, "lease": lease.id, "node": node(), "pid": os.getpid()}


def behaviour(pool: str) -> dict[str, str]:
    """What a worker's tests check of the API, from a Ray task: outcome names by case."""
    client = lessor.connect()
    handle = client.pool(pool)
    out: dict[str, str] = {}
    with handle.lease() as token:
        out["lease"] = type(token).__name__
    lease = handle.acquire(timeout=5)
    handle.release(lease)
    for case, call in {
        "double_release": lambda: handle.release(lease),
        "unknown_pool": lambda: client.pool("no-such-pool").acquire(timeout=1),
    }.items():
        try:
            call()
            out[case] = "ok"
        except LessorError as exc:
            out[case] = type(exc).__name__
    held = [handle.acquire(timeout=5)]  # pool "one": its only token
    try:
        handle.acquire(timeout=0)
        out["exhausted"] = "ok"
    except LessorError as exc:
        out["exhausted"] = type(exc).__name__
    for lease in held:
        handle.release(lease)
    out["same_client"] = str(lessor.connect() is client)
    return out


def _fail() -> None:
    raise ConnectionError("the dependency is down")


def breaker_calls(name: str, n: int, fail: bool) -> list[str]:
    """``n`` calls through breaker ``name``, failing or not: each call's outcome."""
    breaker = lessor.connect().breaker(name)
    out = []
    for _ in range(n):
        try:
            breaker.call(_fail if fail else (lambda: None))
            out.append("ok")
        except ConnectionError:
            out.append("failed")
        except LessorError as exc:
            out.append(type(exc).__name__)
    breaker.flush()
    return out


def breaker_sees(name: str, state: str, timeout: float) -> dict[str, Any]:
    """Wait until this node's handle of breaker ``name`` is pushed ``state``: when."""
    breaker = lessor.connect().breaker(name)
    deadline = time.monotonic() + timeout
    while breaker.state != state and time.monotonic() < deadline:
        time.sleep(0.005)  # (the state is pushed to this process; polled with a deadline)
    return {"state": breaker.state, "at": time.monotonic(), "node": node()}


def wait_grant_or_error(pool: str) -> str:
    """What ``lessor.connect()`` and one acquire say on this node: "granted", or the error."""
    try:
        handle = lessor.connect().pool(pool)
        handle.release(handle.acquire(timeout=10))
    except LessorError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "granted"
