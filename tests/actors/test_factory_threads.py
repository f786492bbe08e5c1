"""Factory calls run on daemon threads a stopping pool waits for, for a bounded time.

With concurrent.futures, a create() stuck on a dead network kept the whole process
from exiting: the interpreter joins those threads at exit, daemon or not.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lessor.actors.executor import FactoryThreads
from tests.support.helpers import wait_until

ROOT = Path(__file__).parents[2]

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


def test_a_lane_runs_at_most_its_limit_and_threads_end_with_the_last_lane() -> None:
    threads = FactoryThreads("t")
    lane = threads.lane(2, "a")
    names: set[str] = set()
    running, most = [0], [0]
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def job() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        names.add(threading.current_thread().name)
        time.sleep(random.uniform(0.0005, 0.002))  # hold the slot a random, non-zero time
        with lock:
            running[0] -= 1
        done.release()

    for _ in range(50):
        lane.submit(job)
    for _ in range(50):
        assert done.acquire(timeout=5)
    assert most[0] == 2, most  # the limit was reached and never passed
    assert 1 <= len(names) <= 2
    assert lane.shutdown(5) is True
    assert wait_until(lambda: not any(t.name.startswith("t-") for t in threading.enumerate()))


def test_a_lane_whose_calls_hang_does_not_starve_another_lane() -> None:
    threads = FactoryThreads("t")
    stuck, other = threads.lane(1, "stuck"), threads.lane(1, "other")
    release = threading.Event()
    stuck.submit(release.wait)
    stuck.submit(release.wait)  # queued behind the first: the lane's limit is 1
    ran = threading.Event()
    other.submit(ran.set)
    try:
        assert ran.wait(5), "one pool's hung create held every factory thread"
    finally:
        release.set()
    assert stuck.shutdown(5) and other.shutdown(5)


def test_shutdown_abandons_a_stuck_call_after_its_timeout() -> None:
    threads = FactoryThreads("t")
    lane = threads.lane(1, "a")
    release = threading.Event()
    lane.submit(release.wait)
    began = time.monotonic()
    assert lane.shutdown(0.2) is False
    assert time.monotonic() - began < 2
    with pytest.raises(RuntimeError):
        lane.submit(release.wait)  # a stopped pool runs its destroys itself
    release.set()  # let the abandoned thread end, so the test leaves none behind
