"""Worker targets for the chaos and Ctrl-C tests: module-level, so spawn can import them."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import lessor
from lessor import Acquire, Release
from tests.support.overlap import Markers, hold


class ChaosFailure(RuntimeError):
    """Raised on purpose: a worker failing, for its group to restart."""


def borrower(pool: str, marker_dir: str, count_dir: str, mean_life: float) -> None:
    """Borrow and hold at random until told to drain; fail on purpose now and then.

    Three ways in turn at random: the caching handle's ``lease()`` block, its
    ``acquire``/``release``, and the raw messages (``ask(Acquire)``,
    ``tell(Release)``) on an uncached handle. Every hold is marked for the overlap
    checker and lasts a random 0-200 µs; every pair adds a byte to
    ``<count_dir>/<pid>``. After an exponentially distributed time (mean
    ``mean_life`` s) the worker raises between two pairs, never while holding.
    """
    client = lessor.connect()
    cached = client.pool(pool)
    raw = client.pool(pool, cache=False)
    markers = Markers(marker_dir)
    rng = random.Random()
    first_grant: dict[str, float] = {}  # a parked lease's borrows share its pool grant
    fails_at = time.monotonic() + rng.expovariate(1 / mean_life)
    count = os.open(os.path.join(count_dir, str(os.getpid())), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while not client.draining.is_set():
            if time.monotonic() >= fails_at:
                raise ChaosFailure(f"worker {os.getpid()} fails on purpose")
            way = rng.randrange(3)
            if way == 0:
                with cached.lease(timeout=30) as resource, markers.holding(resource):
                    pass  # lease() hides the lease: "since" is the moment of marking
            elif way == 1:
                lease = cached.acquire(timeout=30)
                since = first_grant.setdefault(lease.id, lease.granted_at)
                with markers.holding(lease.resource, since=since):
                    pass
                cached.release(lease)
            else:
                lease = raw.ask(Acquire(pool, timeout=30))
                with markers.holding(lease.resource, since=lease.granted_at):
                    pass
                raw.tell(Release(lease.id))
            os.write(count, b".")
    finally:
        os.close(count)


def share(pool: str, ready_dir: str) -> None:
    """Borrow in a loop, holding at random, until told to drain (a polite worker)."""
    client = lessor.connect()
    slots = client.pool(pool)
    Path(ready_dir, str(os.getpid())).touch()
    while not client.draining.is_set():
        with slots.lease(timeout=60):
            hold()


def hold_through_drain(pool: str, ready_dir: str) -> None:
    """Deaf to Ctrl-C and to Drain: hold one lease (or wait for one) until killed.

    Says ``<pid>`` once connected and ``<pid>.holding`` once it holds its lease.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    client = lessor.connect()
    Path(ready_dir, str(os.getpid())).touch()
    client.pool(pool, cache=False).acquire(timeout=60)
    Path(ready_dir, f"{os.getpid()}.holding").touch()
    while True:
        time.sleep(3600)
