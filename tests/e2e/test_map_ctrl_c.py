"""Ctrl-C during map and imap, on a real process group: what was done is kept.

A script (a file, with its ``__main__`` guard, as spawned workers need) maps six items
on two workers: 0, 1 and 3 finish, -2 fails, 4 waits for a file the test makes only
after Ctrl-C (so it finishes during the drain), 5 never finishes (its worker is
killed at the end of the drain). Ctrl-C goes to the whole group, as a terminal's does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.helpers import group_members, wait_until

ROOT = Path(__file__).parents[2]

SCRIPT = """
import json
import sys
from pathlib import Path

from lessor import MapInterrupted, Runtime
from tests.workers import map_targets


def progress(done, total):
    Path(directory, f"progress-{done}").touch()


if __name__ == "__main__":
    mode, directory, signals, grace = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    items = [[x, directory, wait] for x, wait in
             [(0, None), (1, None), (-2, None), (3, None), (4, "go"), (5, "never")]]
    with Runtime(shutdown_timeout=grace, handle_signals=signals == "handled") as runtime:
        if mode == "imap":
            got = []
            try:
                for result in runtime.imap(map_targets.mark_and_wait, items[:2] + items[5:],
                                           workers=2):
                    got.append(result)
                    Path(directory, f"got-{result}").touch()
            except KeyboardInterrupt as exc:
                left = [] if signals == "handled" else runtime.tree()["children"]
                print(json.dumps({"raised": type(exc).__name__, "got": got, "groups": left}))
        elif mode == "uncaught":
            runtime.map(map_targets.mark_and_wait, items, workers=2, chunksize=1,
                        progress=progress)
        else:
            try:
                runtime.map(map_targets.mark_and_wait, items, workers=2, chunksize=1,
                            progress=progress)
            except MapInterrupted as exc:
                failed = {i: e.error_type for i, e in exc.failed.items()}
                print(json.dumps({"results": exc.results, "failed": failed,
                                  "total": exc.total, "text": str(exc)}))
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "map_job.py"
    path.write_text(SCRIPT)
    (tmp_path / "work").mkdir()
    return path


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Whatever happens, no process of a started group outlives the test."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        for pid in group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def run(
    script: Path, mode: str, signals: str, grace: float, started: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    work = script.parent / "work"
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, str(work), signals, str(grace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        start_new_session=True,  # its own process group, as a shell job would be
    )  # fmt: skip
    started.append(proc)
    return proc


def ready(work: Path, *names: str) -> bool:
    return all((work / name).exists() for name in names)


def ctrl_c_when_map_is_waiting(proc: subprocess.Popen[str], work: Path) -> None:
    """Once 0, 1, 3 and -2 are done and 4 and 5 are under way: Ctrl-C, then let 4 finish."""
    assert wait_until(lambda: ready(work, "progress-4", "started-4", "started-5"), timeout=30)
    os.killpg(proc.pid, signal.SIGINT)
    (work / "go").touch()


def finish(proc: subprocess.Popen[str], within: float) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"still running {within} s after Ctrl-C; stdout:\n{out}\nstderr:\n{err}")
    print(f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}")
    return out, err


def all_gone(proc: subprocess.Popen[str]) -> bool:
    return wait_until(lambda: not group_members(proc.pid), timeout=5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signals", ["handled", "unhandled"])
def test_ctrl_c_during_map_raises_map_interrupted_with_what_finished(
    script: Path, started: list[subprocess.Popen[str]], signals: str
) -> None:
    """Whether the runtime handles SIGINT (it shuts down, draining) or Python raises
    KeyboardInterrupt into the wait (the map drains its own workers)."""
    proc = run(script, "catch", signals, 1.0, started)
    ctrl_c_when_map_is_waiting(proc, script.parent / "work")
    out, _ = finish(proc, 20)
    assert proc.returncode == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["results"] == {"0": 0, "1": 1, "3": 9, "4": 16}  # 4 ended in the drain
    assert report["failed"] == {"2": "tests.workers.map_targets.Boom"}
    assert report["total"] == 6
    assert report["text"] == "map-1 interrupted: 5 of 6 items done, 1 of them failed"
    assert all_gone(proc)


@pytest.mark.timeout(60)
def test_an_uncaught_map_interrupted_ends_the_program_saying_so_in_one_line(
    script: Path, started: list[subprocess.Popen[str]]
) -> None:
    """Nothing in between swallows it (``except Exception`` would not). CPython exits
    with 130 only for KeyboardInterrupt itself; any subclass, like any uncaught
    exception, exits with 1."""
    proc = run(script, "uncaught", "handled", 1.0, started)
    ctrl_c_when_map_is_waiting(proc, script.parent / "work")
    _, err = finish(proc, 20)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert lines[-1] == "MapInterrupted: map-1 interrupted: 5 of 6 items done, 1 of them failed"
    assert "Traceback" not in err
    assert all_gone(proc)


@pytest.mark.timeout(60)
def test_a_second_ctrl_c_cuts_the_maps_own_drain_short(
    script: Path, started: list[subprocess.Popen[str]]
) -> None:
    """Unhandled, with a 30 s drain: once item 4's worker has finished it and exited, the
    drain is under way; a second Ctrl-C kills item 5's worker at once."""
    work = script.parent / "work"
    proc = run(script, "catch", "unhandled", 30.0, started)
    ctrl_c_when_map_is_waiting(proc, work)
    assert wait_until(lambda: (work / "started-4").read_text() != "", timeout=5)
    finished_four = int((work / "started-4").read_text())
    assert wait_until(lambda: not psutil.pid_exists(finished_four), timeout=20)
    os.killpg(proc.pid, signal.SIGINT)
    began = time.monotonic()
    out, _ = finish(proc, 20)
    assert time.monotonic() - began < 10
    report = json.loads(out.strip().splitlines()[-1])
    assert report["results"] == {"0": 0, "1": 1, "3": 9, "4": 16}
    assert all_gone(proc)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signals", ["handled", "unhandled"])
def test_ctrl_c_in_imap_propagates_from_next_and_stops_the_workers(
    script: Path, started: list[subprocess.Popen[str]], signals: str
) -> None:
    work = script.parent / "work"
    proc = run(script, "imap", signals, 1.0, started)
    assert wait_until(lambda: ready(work, "got-0", "got-1", "started-5"), timeout=30)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = finish(proc, 20)
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {"raised": "KeyboardInterrupt", "got": [0, 1], "groups": []}
    assert all_gone(proc)
