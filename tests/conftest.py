"""Shared fixtures: every test must leave no thread or child process behind, and
``where`` runs a behaviour test through every pool handle (tests/support/where.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psutil
import pytest

from tests.support.helpers import wait_until
from tests.support.where import WHERE, Where

LEAK_GRACE = 5.0  # seconds a stopping thread or process may take to finish


def _ours(process: psutil.Process) -> bool:
    """A live child that a test started (multiprocessing's resource tracker is the
    interpreter's own helper: started once, it lives until the test run ends)."""
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return "multiprocessing.resource_tracker" not in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    me = psutil.Process()

    def leftovers() -> tuple[list[threading.Thread], list[psutil.Process]]:
        threads = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        children = [p for p in me.children(recursive=True) if _ours(p)]
        return threads, children

    wait_until(lambda: leftovers() == ([], []), timeout=LEAK_GRACE)
    threads, children = leftovers()
    for child in children:
        child.kill()
    assert not threads, f"test left threads running: {[t.name for t in threads]}"
    assert not children, f"test left child processes: {[c.pid for c in children]}"


@pytest.fixture(params=WHERE, ids=WHERE)
def where(request: pytest.FixtureRequest) -> Iterator[Where]:
    """Where the test borrows from: ``where(pool)`` is the handle reaching ``pool`` from
    there, in-process (plain or cached) or from a worker's (uncached or cached) handle.

    Its handles close when the test ends: ask for it after the fixture that makes the
    pool (or ``where.close()`` before stopping a pool the test made), so that a cached
    handle's parked leases go back to a pool that still runs.
    """
    place = Where(request.param)
    try:
        yield place
    finally:
        place.close()
