"""Factory calls run on daemon threads a stopping pool waits for, for a bounded time.

With concurrent.futures, a create() stuck on a dead network kept the whole process
from exiting: the interpreter joins those threads at exit, daemon or not.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from lessor.actors.executor import FactoryThreads

ROOT = Path(__file__).parent.parent

STUCK = """
import threading, time
from lessor import AcquireTimeout, CallableFactory, PoolSpec, start_pool

never = threading.Event()
pool = start_pool(PoolSpec("p", CallableFactory(lambda: never.wait()), max_size=1))
try:
    pool.acquire(timeout=0.2)
except AcquireTimeout:
    print("timed out", flush=True)
began = time.monotonic()
pool.stop(timeout=30)
print(f"stopped in {time.monotonic() - began:.1f}s", flush=True)
"""


def test_a_create_that_never_returns_does_not_keep_the_process_alive() -> None:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STUCK], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    took = time.monotonic() - began
    assert "timed out" in done.stdout and "stopped in" in done.stdout, done.stderr
    assert done.returncode == 0, done.stderr
    assert took < 15, f"the process took {took:.1f}s to exit: {done.stdout}"


def test_threads_are_reused_bounded_and_joined_on_shutdown() -> None:
    threads = FactoryThreads(2, "t")
    names: set[str] = set()
    done = threading.Semaphore(0)

    def job() -> None:
        names.add(threading.current_thread().name)
        done.release()

    for _ in range(50):
        threads.submit(job)
    for _ in range(50):
        assert done.acquire(timeout=5)
    assert 1 <= len(names) <= 2
    assert threads.shutdown(5) is True


def test_shutdown_abandons_a_stuck_call_after_its_timeout() -> None:
    threads = FactoryThreads(1, "t")
    release = threading.Event()
    threads.submit(release.wait)
    began = time.monotonic()
    assert threads.shutdown(0.2) is False
    assert time.monotonic() - began < 2
    release.set()  # let the abandoned thread end, so the test leaves none behind
