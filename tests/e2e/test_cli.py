from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lessor import cli
from lessor.cli import main
from tests.support.helpers import group_members, wait_until
from tests.support.overlap import DuplicateTokens

ROOT = Path(__file__).parents[2]

SMALL = ["demo", "--threads", "4", "--jobs", "50", "--slots", "2", "--workers", "1"]


def test_demo_shares_slots_without_clashes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(SMALL) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["clashes"], report["clashes_in_workers"]) == (0, 0)
    assert report["workers_finished"]
    stats = report["stats"]
    assert stats["acquired"] == 251  # 5 x 50 jobs and one thread that died holding a slot
    assert stats["released"] == 250
    assert stats["reclaimed"] == 1
    assert stats["size"] == 2
    assert report["tree"]["children"][0]["id"] == "slots"
    assert report["shutdown"]["clean"]


@pytest.mark.parametrize(
    ("who", "args"),
    [("threads", ["--threads", "4", "--workers", "1"]),
     ("workers", ["--threads", "0", "--workers", "2"])],
)  # fmt: skip
def test_demo_exits_non_zero_when_a_slot_is_held_twice(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    who: str,
    args: list[str],
) -> None:
    """Mutant: a factory that makes token 0 twice, so both slots are the same one."""
    monkeypatch.setattr(cli, "TokenFactory", DuplicateTokens)
    assert main(["demo", *args, "--jobs", "50", "--slots", "2"]) == 1
    report = json.loads(capsys.readouterr().out)
    in_threads = report["clashes"] - report["clashes_in_workers"]
    assert (in_threads if who == "threads" else report["clashes_in_workers"]) > 0


def _workers_started(pid: int, n: int) -> bool:
    """The demo has spawned its ``n`` worker processes: its runtime handles Ctrl-C now."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return True  # it has already exited: the assertions below say how
    spawned = 0
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            spawned += "spawn_main" in " ".join(child.cmdline())
    return spawned >= n


@pytest.mark.timeout(60)
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_the_demo_quietly(presses: int) -> None:
    """Ctrl-C to the demo's process group (as a terminal sends it): it drains and exits
    130 within seconds, with a line or two and no traceback, and leaves no process.
    Two Ctrl-C in quick succession stop it at once, just as quietly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lessor.cli", "demo", "--jobs", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,  # its own process group, as a shell job would be
    )  # fmt: skip
    try:
        assert wait_until(lambda: _workers_started(proc.pid, 2), timeout=30)
        os.killpg(proc.pid, signal.SIGINT)
        pressed = time.monotonic()
        if presses == 2:
            time.sleep(0.05)  # the second press itself, not a synchronisation
            os.killpg(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 5 s after Ctrl-C")
        took = time.monotonic() - pressed
        lines = err.splitlines()
        print(f"exit {proc.returncode} after {took:.2f} s; stderr:\n{err}")
        assert proc.returncode in (128 + signal.SIGINT, -signal.SIGINT)
        assert "Traceback" not in err
        assert len(lines) <= 5
        assert lines[-1] == "lessor demo: interrupted; shut down"
        assert wait_until(lambda: not group_members(proc.pid), timeout=2), group_members(proc.pid)
    finally:
        for pid in group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_version_prints_the_installed_version() -> None:
    import importlib.metadata

    import lessor

    out = subprocess.run(
        [sys.executable, "-m", "lessor.cli", "--version"], capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == f"lessor {lessor.__version__}"
    assert importlib.metadata.version("lessor") == lessor.__version__  # pyproject reads it
