"""Map functions for test_worker_release_errors: each misuses a lease once, in a worker.

Each returns what the bad release raised, how many frames it sent (none: the
worker's ledger refuses it locally), and what the pool looked like afterwards.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import lessor
from lessor import LeaseExpired
from lessor.handles.ops import LeaseOps
from lessor.protocol.messages import Lease
from lessor.worker.client import Client

POOL, SHORT, OTHER = "slots", "short", "other"  # max_size=1 each; SHORT: lease_ttl=0.5
WAIT = 10.0


def _refused(client: Client, pool: LeaseOps, lease: Lease) -> tuple[str, int]:
    """Release ``lease``: the error's name ("" if none), and the frames the release sent."""
    before = client.frames_sent
    try:
        pool.release(lease)
    except lessor.LessorError as exc:
        return type(exc).__name__, client.frames_sent - before
    return "", client.frames_sent - before


def _next_acquire_works(pool: LeaseOps) -> bool:
    """max_size=1: another borrow is served only if the last lease came back."""
    lease = pool.acquire(timeout=WAIT, ttl=60)
    pool.release(lease)
    return True


def double(client: Client, pool: LeaseOps) -> dict[str, Any]:
    lease = pool.acquire(timeout=WAIT)
    pool.release(lease)
    raised, frames = _refused(client, pool, lease)
    return {"raised": raised, "frames": frames, "next_ok": _next_acquire_works(pool)}


def foreign(client: Client, pool: LeaseOps) -> dict[str, Any]:
    """Another thread of this process releases this thread's lease: it stays held."""
    lease = pool.acquire(timeout=WAIT)
    out: list[tuple[str, int]] = []
    other = threading.Thread(target=lambda: out.append(_refused(client, pool, lease)))
    other.start()
    other.join()
    leased = pool.stats().leased
    raised_by_owner, _ = _refused(client, pool, lease)  # still ours to give back
    raised, frames = out[0]
    return {"raised": raised, "frames": frames, "leased": leased,
            "owner": raised_by_owner, "next_ok": _next_acquire_works(pool)}  # fmt: skip


def other_process(client: Client, pool: LeaseOps) -> dict[str, Any]:
    """A lease granted to another process (its holder says so) is not this one's."""
    lease = pool.acquire(timeout=WAIT)
    theirs = replace(lease, id=f"{lease.id}0", holder="worker:someone-else:1")
    raised, frames = _refused(client, pool, theirs)
    owner, _ = _refused(client, pool, lease)
    return {"raised": raised, "frames": frames, "owner": owner,
            "next_ok": _next_acquire_works(pool)}  # fmt: skip


def unknown(client: Client, pool: LeaseOps) -> dict[str, Any]:
    """Made-up ids, and a real lease released through another pool's handle."""
    lease = pool.acquire(timeout=WAIT)
    made_up = replace(lease, id=f"{POOL}/no-such-epoch/1")
    raised, frames = _refused(client, pool, made_up)
    never, _ = _refused(client, pool, replace(lease, id=f"{lease.id}999"))
    other_pool, _ = _refused(client, client.pool(OTHER, cache=False), lease)
    owner, _ = _refused(client, pool, lease)
    return {"raised": raised, "frames": frames, "never": never, "other_pool": other_pool,
            "owner": owner, "next_ok": _next_acquire_works(pool)}  # fmt: skip


def expired(client: Client, pool: LeaseOps) -> dict[str, Any]:
    """The pool's lease_ttl runs out: the pool takes the lease back and says so."""
    noticed = threading.Event()
    client.on_push(lambda message: isinstance(message, LeaseExpired) and noticed.set())
    lease = pool.acquire(timeout=WAIT)
    told = noticed.wait(WAIT)
    raised, frames = _refused(client, pool, lease)
    return {"raised": raised, "frames": frames, "told": told,
            "next_ok": _next_acquire_works(pool)}  # fmt: skip


def fine(client: Client, pool: LeaseOps) -> dict[str, Any]:
    """A good release: one one-way frame uncached, none when it parks; never a reply."""
    lease = pool.acquire(timeout=WAIT)
    raised, frames = _refused(client, pool, lease)
    return {"raised": raised, "frames": frames, "next_ok": _next_acquire_works(pool)}


SCENARIOS = {
    "double": double,
    "foreign": foreign,
    "other_process": other_process,
    "unknown": unknown,
    "expired": expired,
    "fine": fine,
}


def misuse(job: list[Any]) -> dict[str, Any]:
    """Map function: ``[scenario, cache]``; the outcome of that scenario in this worker."""
    scenario, cache = job
    client = lessor.connect()
    pool = client.pool(SHORT if scenario == "expired" else POOL, cache=cache)
    return SCENARIOS[scenario](client, pool)
