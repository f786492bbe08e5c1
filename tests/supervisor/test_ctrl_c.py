"""Ctrl-C on a real process group: a runtime and its 8 worker processes share 2 tokens.

The terminal sends SIGINT to the whole foreground group, runtime and workers alike;
the test does the same with ``os.killpg``. The program must stop within its
shutdown time with a short message (not a traceback from every worker) and leave
no process behind; a second Ctrl-C during a drain that would last must end it at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import group_members, wait_until

ROOT = Path(__file__).parents[2]
WORKERS = 8
MAX_STDERR_LINES = 15

SCRIPT = """
import sys
from lessor import PoolSpec, Runtime, TokenFactory
from tests.workers import chaos_targets

mode, ready_dir, shutdown_timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
handle_signals = sys.argv[4] == "handled"
target = {"share": chaos_targets.share, "stubborn": chaos_targets.hold_through_drain}[mode]
with Runtime(shutdown_timeout=shutdown_timeout, handle_signals=handle_signals) as runtime:
    runtime.add_pool(PoolSpec("tokens", TokenFactory(), max_size=2))
    workers = runtime.spawn_workers(target, 8, args=("tokens", ready_dir))
    runtime.join(workers)
"""


def start(
    mode: str, ready: Path, shutdown_timeout: float, signals: str = "handled"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode, str(ready), str(shutdown_timeout), signals],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,  # its own process group, as a shell job would be
    )  # fmt: skip


def py_spy(pid: int) -> str:
    """Where a hung runtime is stuck (every thread), if py-spy is installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return "(no py-spy)"
    done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    return done.stdout + done.stderr


def finish(proc: subprocess.Popen[str], within: float) -> tuple[float, str]:
    """Wait up to ``within`` s for the runtime to exit: (seconds taken, its stderr).

    On a hang, the runtime's stacks are dumped and the whole group SIGKILLed.
    """
    began = time.monotonic()
    try:
        _, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        stacks = py_spy(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"still running {within:.1f} s after Ctrl-C; stacks:\n{stacks}\nstderr:\n{err}")
    return time.monotonic() - began, err


def check_quiet_and_gone(
    proc: subprocess.Popen[str], err: str, pids: list[int], quiet: bool = True
) -> None:
    """Exited as Ctrl-C'd programs do, said little, and took its whole group with it.

    Not ``quiet``: the program left Ctrl-C to Python (``handle_signals=False``), so its
    own KeyboardInterrupt traceback is its business; no worker may print one.
    """
    lines = err.splitlines()
    print(f"exit {proc.returncode}; stderr ({len(lines)} lines):\n{err}")
    wrong = []
    if proc.returncode not in (-signal.SIGINT, 128 + signal.SIGINT):
        wrong.append(f"exit code {proc.returncode}")
    if quiet and err.count("Traceback (most recent call last)") > 1:
        wrong.append(f"{err.count('Traceback (most recent call last)')} tracebacks")
    if quiet and len(lines) >= MAX_STDERR_LINES:
        wrong.append(f"{len(lines)} lines on stderr")
    if "Process lessor-" in err:
        wrong.append("a worker printed a traceback")
    if not wait_until(lambda: not group_members(proc.pid), timeout=1.0):
        wrong.append(f"left behind in the group: {group_members(proc.pid)} (workers: {pids})")
    assert not wrong, "; ".join(wrong)


@pytest.fixture
def group_reaper() -> Iterator[list[subprocess.Popen[str]]]:
    """Whatever happens, no process of a started group outlives the test."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        for pid in group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.timeout(60)
def test_ctrl_c_stops_the_group_quietly_within_the_shutdown_time(
    tmp_path: Path, group_reaper: list[subprocess.Popen[str]]
) -> None:
    shutdown_timeout = 5.0
    proc = start("share", tmp_path, shutdown_timeout)
    group_reaper.append(proc)
    assert wait_until(lambda: len(list(tmp_path.iterdir())) == WORKERS, timeout=30)
    pids = [int(p.name) for p in tmp_path.iterdir()]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the runtime and every worker
    took, err = finish(proc, shutdown_timeout + 2)
    print(f"exited {took:.3f} s after Ctrl-C")
    check_quiet_and_gone(proc, err, pids)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signals", ["handled", "unhandled"])
def test_a_second_ctrl_c_during_the_drain_ends_it_at_once(
    tmp_path: Path, group_reaper: list[subprocess.Popen[str]], signals: str
) -> None:
    """Whether the runtime handles SIGINT itself or Python raises KeyboardInterrupt
    (``handle_signals=False``) into the drain, the second Ctrl-C stops everything."""
    shutdown_timeout = 20.0  # two workers never let go: the drain would last all of it
    proc = start("stubborn", tmp_path, shutdown_timeout, signals)
    group_reaper.append(proc)

    def ready() -> list[Path]:
        return list(tmp_path.iterdir())

    assert wait_until(lambda: len(ready()) == WORKERS + 2, timeout=30)  # 8 in, 2 holding
    pids = [int(p.name) for p in ready() if p.suffix == ""]
    holders = [int(p.stem) for p in ready() if p.suffix == ".holding"]
    waiters = [pid for pid in pids if pid not in holders]
    os.killpg(proc.pid, signal.SIGINT)
    # The drain has begun once the waiters were refused (ShuttingDown) and left.
    assert wait_until(lambda: not set(waiters) & set(group_members(proc.pid)), timeout=10)
    assert set(holders) <= set(group_members(proc.pid))  # still holding: still draining
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C again: stop now
    took, err = finish(proc, 2.0)
    print(f"exited {took:.3f} s after the second Ctrl-C")
    check_quiet_and_gone(proc, err, pids, quiet=signals == "handled")
