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

from tests.support.helpers import group_members, wait_until

ROOT = Path(__file__).parents[2]


def _demo_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    out = subprocess.run(
        [sys.executable, "-m", "lessor.cli", "demo", "--json", *args], check=False,
        capture_output=True, text=True, timeout=240, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip
    return out.returncode, json.loads(out.stdout), out.stderr


def test_demo_on_a_pipe_prints_plain_lines_and_a_json_report(tmp_path: Path) -> None:
    """Not a terminal: plain progress lines on stderr (no live view, no escape codes)."""
    code, report, err = _demo_json(
        "--items", "1500", "--workers", "2", "--no-scene", "--http-latency", "0.004",
        env={"LESSOR_RUNTIME_DIR": str(tmp_path)},
    )  # fmt: skip
    assert code == 0, err
    assert report["ok"] and report["acknowledged"] == report["rows"] == 1500
    progress = [line for line in err.splitlines() if "items," in line]
    assert progress, err
    assert "\x1b[" not in err
    assert all("/1500 items" in line for line in progress)
    assert not list(tmp_path.iterdir())  # its registry entry went with it


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
        [sys.executable, "-m", "lessor.cli", "demo", "--items", "100000", "--workers", "2"],
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
