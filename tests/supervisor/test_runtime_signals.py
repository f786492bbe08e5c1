"""The Runtime shuts down gracefully on SIGTERM, SIGINT and at interpreter exit."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

SCRIPT = """
import logging, signal, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from lessor import PoolSpec, Runtime, TokenFactory
rt = Runtime(shutdown_timeout=0.2)
pool = rt.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
lease = pool.acquire(timeout=5)
print("ready", flush=True)
if sys.argv[1] == "wait":
    signal.pause()
"""


def run(mode: str, sig: int | None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    if sig is not None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)]
)
def test_signal_shuts_down_and_reclaims(sig: int, code: int) -> None:
    done = run("wait", sig)
    assert done.returncode == code, done.stderr
    assert "lessor.runtime shutdown in" in done.stderr
    assert "1 leases reclaimed" in done.stderr
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in done.stderr


def test_interpreter_exit_shuts_down_without_hanging() -> None:
    done = run("exit", None)
    assert done.returncode == 0, done.stderr
    assert "1 leases reclaimed" in done.stderr


BUSY = """
import os, random, signal, sys, threading, time
from lessor import PoolSpec, Runtime, TokenFactory
rt = Runtime(shutdown_timeout=5)
pool = rt.add_pool(PoolSpec("p", TokenFactory(), max_size=2))
started = threading.Event()

def interrupt():
    started.wait(10)
    time.sleep(random.uniform(0.05, 0.2))
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=interrupt, daemon=True).start()
try:
    while True:  # the main thread runs the pool's turns itself, most of the time
        pool.release(pool.acquire(timeout=5))
        started.set()
except KeyboardInterrupt:
    pass
report = rt.shutdown()
print(report.duration_s, len(report.killed), flush=True)
"""


def test_ctrl_c_while_the_main_thread_holds_a_pools_turn_shuts_down_at_once() -> None:
    """The runtime's handler runs on the main thread, which runs pool turns itself; it
    used to land inside one and wait for it: 15 s of timeouts and the pool killed."""
    for _ in range(4):
        done = subprocess.run([sys.executable, "-c", BUSY], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.stdout.strip(), done.stderr
        duration, killed = done.stdout.split()
        assert (float(duration) < 2.0, killed) == (True, "0"), done.stdout + done.stderr
