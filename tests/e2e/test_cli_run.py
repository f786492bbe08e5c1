"""``lessor run --config tree.toml module:function`` with real worker processes: a job
shares a configured pool without a slot ever held twice (exit 0), a failing job exits
1, an unusable config or target exits 2 naming the key and line, Ctrl-C exits 130.

The ``run`` subcommand is reached through tests/workers/run_targets.py, which builds a
parser with only it (``lessor.cli`` wires it in itself)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import group_members, wait_until
from tests.workers.run_targets import main

ROOT = Path(__file__).parents[2]
JOB = "tests.workers.run_targets:lease_slots"


def tree(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tree.toml"
    path.write_text(text)
    return str(path)


def slots_config(tmp_path: Path, markers: Path, factory: str = "tokens", workers: int = 3,
                 leases: int = 50) -> str:  # fmt: skip
    """A pool of two slots ("a" and "b" from ``factory = "tokens"``, else ``factory``'s),
    and ``workers`` workers running ``lease_slots`` ``leases`` times each."""
    markers.mkdir()
    tokens = 'tokens = ["a", "b"]' if factory == "tokens" else ""
    return tree(
        tmp_path,
        f"""\
[runtime]
shutdown_timeout = 5.0

[pools.slots]
factory = "{factory}"
{tokens}
max_size = 2

[workers]
count = {workers}
max_restarts = 0
args = ["slots", {leases}, "{markers}"]
""",
    )


def done(markers: Path) -> dict[str, tuple[int, int]]:
    """Each worker's ``done-<index>`` file: (leases, clashes)."""
    out = {}
    for path in sorted(markers.glob("done-*")):
        leases, clashes = path.read_text().split()
        out[path.name] = (int(leases), int(clashes))
    return out


def lessor_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.workers.run_targets", "run", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False,
    )  # fmt: skip


def test_three_workers_share_two_slots_and_never_hold_one_twice(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    proc = lessor_run("--config", slots_config(tmp_path, markers), JOB)
    assert proc.returncode == 0, proc.stderr
    assert done(markers) == {f"done-{i}": (50, 0) for i in range(3)}
    assert not list(markers.glob("*.held"))  # every marker was let go
    assert proc.stderr.splitlines()[-1].startswith("lessor run: shut down in ")
    assert proc.stderr.splitlines()[-1].endswith("; clean")


def test_the_marker_check_sees_a_slot_held_twice(tmp_path: Path) -> None:
    """Mutant: a factory (named in the config) that makes token 0 twice."""
    markers = tmp_path / "markers"
    config = slots_config(tmp_path, markers, "tests.support.overlap:DuplicateTokens")
    proc = lessor_run("--config", config, JOB)
    assert proc.returncode == 0, proc.stderr
    assert sum(clashes for _, clashes in done(markers).values()) > 0


def test_workers_option_overrides_the_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    markers = tmp_path / "markers"
    config = slots_config(tmp_path, markers, workers=1, leases=5)
    assert main(["run", "--config", config, "--workers", "2", JOB]) == 0
    assert done(markers) == {"done-0": (5, 0), "done-1": (5, 0)}
    assert capsys.readouterr().err.strip().endswith("; clean")


def test_the_count_defaults_to_the_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    config = tree(tmp_path, f'[pools.slots]\nfactory = "tokens"\ncount = 1\n'
                  f'[workers]\nargs = ["slots", 3, "{markers}"]\n')  # fmt: skip
    monkeypatch.setattr("lessor.cli.run.os.cpu_count", lambda: 2)
    assert main(["run", "--config", config, JOB]) == 0
    assert sorted(done(markers)) == ["done-0", "done-1"]


def test_a_failing_job_exits_1_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tree(tmp_path, '[workers]\ncount = 2\nmax_restarts = 0\nargs = ["boom on purpose"]\n')
    assert main(["run", "--config", config, "tests.workers.run_targets:fail"]) == 1
    err = capsys.readouterr().err
    assert "lessor run: tests.workers.run_targets:fail failed: root/job" in err
    assert "RuntimeError: boom on purpose" in err  # the worker's traceback
    assert err.splitlines()[-1].startswith("lessor run: shut down in ")


def test_a_bad_config_exits_2_naming_each_key_and_line(tmp_path: Path) -> None:
    config = tree(tmp_path, '[pools.slots]\nfactory = "tokens"\nmax_size = -1\n'
                  "[workers]\ncount = 2\nrestarts = 3\n")  # fmt: skip
    proc = lessor_run("--config", config, JOB)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{config}:3: pools.slots.max_size: must be an int >= 0, got -1",
        f"{config}:6: workers.restarts: unknown key; expected one of args, backoff, count, "
        "max_restarts, max_seconds, restart",
    ]


def test_a_toml_syntax_error_exits_2_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tree(tmp_path, "[workers]\ncount = \n")
    assert main(["run", "--config", config, JOB]) == 2
    assert capsys.readouterr().err.startswith(f"{config}:2: invalid TOML: ")


@pytest.mark.parametrize(
    ("target", "says"),
    [("tests.workers.run_targets:nothing", "has no attribute 'nothing'"),
     ("tests.workers.no_such_module:job", "cannot import 'tests.workers.no_such_module'"),
     ("tests.workers.run_targets:Numbers", "not a module-level function"),
     ("tests.workers.run_targets:Numbers.create", "not a module-level function"),
     ("tests.workers.run_targets", "must be 'package.module:name'")],
)  # fmt: skip
def test_a_target_that_is_not_a_module_level_function_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, says: str
) -> None:
    config = tree(tmp_path, "[workers]\ncount = 1\n")
    assert main(["run", "--config", config, target]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lessor run: {target}: ") and says in err, err


def test_args_that_do_not_fit_the_function_fail_the_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tree(tmp_path, "[workers]\ncount = 1\nmax_restarts = 0\nargs = [1, 2, 3]\n")
    assert main(["run", "--config", config, "tests.workers.run_targets:fail"]) == 1
    assert "TypeError: fail() takes 1 positional argument" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_ctrl_c_drains_and_exits_130(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ready.mkdir()
    config = tree(tmp_path, '[runtime]\nshutdown_timeout = 5.0\n[pools.slots]\nfactory = "tokens"\n'
                  f'count = 2\n[workers]\ncount = 2\nargs = ["slots", "{ready}"]\n')  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.workers.run_targets", "run", "--config", config,
         "tests.workers.run_targets:lease_forever"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: len(list(ready.iterdir())) == 2, timeout=30)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches the job
        pressed = time.monotonic()
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 130, err
        assert time.monotonic() - pressed < 10
        assert err.splitlines()[-2:] == ["lessor run: interrupted", err.splitlines()[-1]]
        assert err.splitlines()[-1].startswith("lessor run: shut down in ")
        assert "Traceback" not in err
        assert wait_until(lambda: not group_members(proc.pid), timeout=5)
    finally:
        for pid in group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
