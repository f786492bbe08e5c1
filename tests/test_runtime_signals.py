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
