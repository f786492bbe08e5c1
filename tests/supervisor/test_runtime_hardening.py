"""The Runtime under abuse: signals during shutdown, unspawnable targets, workers that
keep failing, a dead root, and a shutdown whose own caller holds leases."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from lessor import (
    ChildSpec,
    LessorError,
    PoolSpec,
    Runtime,
    TaskFailed,
    TokenFactory,
)
from lessor.specs import SupervisorSpec
from lessor.supervisor.restarts import Remove, Restart, RestartIntensity, RestartPlanner
from lessor.supervisor.workers import WorkerPids
from tests.support.helpers import refuses_acquires, wait_until
from tests.workers import hardening_targets as t

REPO = Path(__file__).parents[2]


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(max_restarts=10, handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


def run_python(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a Python script as a user would (from the repo), and insist that it exits 0."""
    done = subprocess.run([sys.executable, *args], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def _errors() -> Any:
    """lessor.errors, imported late: a test fails on its own, not at collection."""
    import lessor.errors

    return lessor.errors


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        return exc


# -- 2. signals during shutdown ------------------------------------------------------------

SIGNAL_SCRIPT = """
import logging, signal, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from lessor import PoolSpec, Runtime, TokenFactory
from tests.workers import hardening_targets as t
mode, ready = sys.argv[1], sys.argv[2]
rt = Runtime(shutdown_timeout=30)
rt.add_pool(PoolSpec("p", TokenFactory(), max_size=4))
if mode == "stubborn":
    rt.spawn_workers(t.hold_and_ignore, 1, args=("p", ready), name="stubborn")
else:
    rt.spawn_workers(t.hold_until_drained, 2, args=("p", ready), name="polite")
while True:
    signal.pause()
"""


def _start(mode: str, ready: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SIGNAL_SCRIPT, mode, str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # its own process group, as a terminal would make
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, bool]:
    """Its stderr, and whether it ended in time (if not, the whole group is killed)."""
    try:
        _, err = proc.communicate(timeout=timeout)
        return err, True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return err, False


def _short_interrupt(err: str) -> None:
    """One line for the runtime's KeyboardInterrupt; no traceback, from it or the workers."""
    assert "Traceback (most recent call last)" not in err, err
    assert err.splitlines()[-1] == "KeyboardInterrupt: the lessor runtime was shut down", err


@pytest.mark.timeout(60)
def test_a_second_sigint_during_the_drain_stops_everything_at_once(tmp_path: Path) -> None:
    proc = _start("stubborn", tmp_path)
    try:
        assert wait_until((tmp_path / "ready").exists, timeout=30)
        proc.send_signal(signal.SIGINT)  # first: drain for up to 30 s
        assert wait_until((tmp_path / "drained").exists, timeout=10)
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)  # second: stop now
        err, ended = _finish(proc, 10)
        took = time.monotonic() - second
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert ended, f"deadlocked after the second SIGINT:\n{err}"
    assert took < 2.5, f"{took:.2f}s after the second signal\n{err}"
    assert proc.returncode == -signal.SIGINT, err
    assert "lessor.runtime shutdown in" in err
    assert "1 leases reclaimed" in err
    assert "killed ['root/stubborn.0.1']" in err
    _short_interrupt(err)


@pytest.mark.timeout(60)
def test_ctrl_c_on_the_process_group_leaves_the_workers_to_the_runtime(tmp_path: Path) -> None:
    proc = _start("polite", tmp_path)
    try:
        assert wait_until(lambda: len(list(tmp_path.iterdir())) == 2, timeout=30)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        err, ended = _finish(proc, 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert ended, err
    assert proc.returncode == -signal.SIGINT, err
    # The workers ignored SIGINT, were told to drain, gave their leases back, exited.
    assert "0 leases reclaimed" in err and "killed []" in err, err
    _short_interrupt(err)


@pytest.mark.timeout(60)
def test_a_sigint_while_a_worker_starts_up_does_not_kill_it(
    runtime: Runtime, tmp_path: Path
) -> None:
    runtime.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
    group = runtime.spawn_workers(t.hold_until_drained, 1, args=("p", str(tmp_path)))
    (pid,) = group.current(5).ask(WorkerPids(), timeout=5)
    os.kill(pid, signal.SIGINT)  # still importing: before run_worker could ignore it
    assert wait_until(lambda: len(list(tmp_path.iterdir())) == 1, timeout=30)
    assert [e.kind for e in runtime.events() if e.node.startswith(f"{group.path}.")] == ["started"]
    assert runtime.shutdown(timeout=5).clean


@pytest.mark.timeout(60)
def test_a_concurrent_shutdown_waits_for_the_first_and_returns_its_report() -> None:
    rt = Runtime(handle_signals=False)
    pool = rt.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
    held, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        lease = pool.acquire(timeout=5)
        held.set()
        let_go.wait(30)
        pool.release(lease)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    reports: list[Any] = []
    first = threading.Thread(target=lambda: reports.append(rt.shutdown(timeout=30)))
    first.start()
    assert wait_until(lambda: refuses_acquires(pool, 0.05))
    second = threading.Thread(target=lambda: reports.append(rt.shutdown(timeout=0)))
    second.start()
    assert not wait_until(lambda: reports != [], timeout=0.3)  # both wait for the holder
    let_go.set()
    for thread in (holder, first, second):
        thread.join(10)
    assert len(reports) == 2 and reports[0] is reports[1]
    assert reports[0].clean


# -- 3. targets that cannot be spawned -----------------------------------------------------


@pytest.mark.timeout(60)
def test_unspawnable_targets_and_args_are_refused_at_the_call(runtime: Runtime) -> None:
    def nested(x: Any = None) -> Any:
        return x

    with pytest.raises(TypeError, match="lambda"):
        runtime.spawn_workers(lambda: None, 1)
    with pytest.raises(TypeError, match="inside a function"):
        runtime.spawn_workers(nested, 1)
    fork_queue = multiprocessing.get_context("fork").Queue()
    spawn_queue = multiprocessing.get_context("spawn").Queue()
    try:
        with pytest.raises(TypeError, match=r"args\[1\].*fork context"):
            runtime.spawn_workers(t.hold_until_drained, 1, args=("p", fork_queue))
        from lessor.worker.bootstrap import check_spawnable

        check_spawnable(t.hold_until_drained, ("p", spawn_queue))  # a spawn queue crosses
    finally:
        for queue in (fork_queue, spawn_queue):
            queue.close()
            queue.join_thread()
    with pytest.raises(TypeError, match="lambda"):
        runtime.map(lambda x: x + 1, [1, 2])
    with pytest.raises(TypeError, match="inside a function"):
        runtime.map(nested, [1])
    assert runtime.tree()["children"] == []  # nothing was started
    assert runtime.map(abs, [-1, -2], workers=1) == [1, 2]  # and the runtime still works


def test_a_target_in_a_main_module_without_a_file_is_refused() -> None:
    script = (
        "from lessor import Runtime\n"
        "def work(): pass\n"
        "rt = Runtime(handle_signals=False)\n"
        "try:\n"
        "    rt.spawn_workers(work, 1)\n"
        "except TypeError as exc:\n"
        "    print('TypeError', exc)\n"
        "rt.shutdown()\n"
    )
    done = run_python("-c", script, timeout=60)
    assert done.stdout.startswith("TypeError") and "__main__" in done.stdout, done.stdout


MAIN_GUARD_SCRIPT = """
import json
from lessor import Runtime
from lessor.worker.bootstrap import _main_guarded, check_spawnable

def top(x=None): return x
class Top:
    def m(self): pass
if True:
    def in_if(): pass
try:
    import os as imported
except ImportError:
    pass
with open(__file__) as _source:
    def in_with(): pass
for looped in [in_if]:
    pass

if __name__ == "__main__":
    def nested(): pass
    class Nested:
        def m(self): pass
    def top(x=None): return x  # bound at module level too: a worker finds that one
    checks = {
        "nested": lambda: check_spawnable(nested),
        "Nested": lambda: check_spawnable(Nested),
        "method": lambda: check_spawnable(Nested().m),
        "arg": lambda: check_spawnable(top, (Nested(),)),
        "top": lambda: check_spawnable(top, (Top(),)),
        "Top.m": lambda: check_spawnable(Top().m),
        "in_if": lambda: check_spawnable(in_if),
        "in_with": lambda: check_spawnable(in_with),
        "imported": lambda: check_spawnable(imported.getcwd),
        "looped": lambda: check_spawnable(looped),
        "json": lambda: check_spawnable(json.dumps),
    }
    for name, check in checks.items():
        try:
            check()
            print(name, "OK")
        except TypeError as exc:
            print(name, "TypeError", exc)
    print("guarded", ",".join(sorted(_main_guarded())))
    rt = Runtime(handle_signals=False)
    try:
        rt.spawn_workers(nested, 1)
    except TypeError as exc:
        print("spawn_workers TypeError", exc)
    try:
        rt.map(Nested().m, [1])
    except TypeError as exc:
        print("map TypeError", exc)
    print("children", rt.tree()["children"])
    rt.shutdown(timeout=5)
    with open(__file__, "w") as broken:
        broken.write("def (:\\n")  # unparsable now: let through, the worker would report
    try:
        check_spawnable(nested)
        print("unparsable OK")
    except TypeError as exc:
        print("unparsable TypeError", exc)
else:
    def in_else(): pass
"""


@pytest.mark.timeout(60)
def test_a_target_under_the_main_guard_of_a_script_is_refused(tmp_path: Path) -> None:
    """A spawned worker runs the script as __mp_main__, without its main block."""
    script = tmp_path / "script.py"
    script.write_text(MAIN_GUARD_SCRIPT)
    done = run_python(str(script), timeout=50)
    out = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    guard = "is defined under `if __name__ == '__main__':`"
    move = "move it to module level"
    for name, what in [("nested", "__main__.nested"), ("Nested", "__main__.Nested")]:
        assert out[name].startswith(f"TypeError worker target {what} {guard}"), out
        assert out[name].endswith(move), out
    assert out["method"].startswith("TypeError worker target: __main__.Nested " + guard), out
    assert out["arg"].startswith("TypeError args[0] of worker target __main__.top: "), out
    assert f"__main__.Nested {guard}" in out["arg"], out
    for name in ["top", "Top.m", "in_if", "in_with", "imported", "looped", "json"]:
        assert out[name] == "OK", (name, out)
    guarded = set(out["guarded"].split(","))
    assert {"nested", "Nested", "checks"} <= guarded, out
    assert not guarded & {"top", "Top", "in_if", "in_with", "imported", "looped", "in_else"}
    assert out["spawn_workers"].startswith(f"TypeError worker target __main__.nested {guard}")
    assert out["map"].startswith(f"TypeError map function: __main__.Nested {guard}"), out
    assert out["children"] == "[]", out  # nothing was started
    assert out["unparsable"] == "OK", out


@pytest.mark.timeout(60)
def test_a_worker_that_cannot_start_fails_only_its_group(runtime: Runtime) -> None:
    errors = _errors()
    pool = runtime.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
    group = runtime.spawn_workers(t.NotHere(), 1, args=(1,), max_restarts=0)
    with pytest.raises(errors.WorkersFailed) as info:
        runtime.join(group, timeout=30)
    assert "cannot be rebuilt in a worker process" in info.value.worker_traceback
    assert "cannot be rebuilt in a worker process" in str(info.value)
    assert runtime.failure is None
    pool.release(pool.acquire(timeout=5))  # the rest of the tree is untouched
    assert wait_until(lambda: [c["id"] for c in runtime.tree()["children"]] == ["p"])


# -- 4. workers that keep failing ----------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_worker_that_keeps_raising_ends_its_group_for_good(runtime: Runtime) -> None:
    errors = _errors()
    group = runtime.spawn_workers(t.boom, 1, max_restarts=1)
    with pytest.raises(errors.WorkersFailed) as info:
        runtime.join(group, timeout=30)
    assert "ValueError: boom: this worker always fails" in info.value.worker_traceback
    assert "ValueError: boom" in str(info.value)
    assert isinstance(info.value, LessorError)
    with pytest.raises(errors.WorkersFailed):
        runtime.join(group)  # at once, however often it is asked
    assert runtime.failure is None
    assert wait_until(lambda: runtime.tree()["children"] == [])  # removed, never restarted
    starts = [e for e in runtime.events() if e.kind == "started" and e.node.startswith(group.path)]
    assert [e.node for e in starts] == [group.path, f"{group.path}.0.1", f"{group.path}.0.2"]


FAILING_GROUP_SCRIPT = """
import logging
logging.disable(logging.CRITICAL)  # only what the workers print reaches stderr
from lessor import Runtime
from lessor.errors import WorkersFailed
from tests.workers import hardening_targets as t
rt = Runtime(handle_signals=False)
try:
    group = rt.spawn_workers(t.boom, 2, max_restarts=2)
    try:
        rt.join(group, timeout=30)
    except WorkersFailed as exc:
        print("traceback", "ValueError: boom: this worker always fails" in exc.worker_traceback)
        print("in message", "Traceback (most recent call last)" in str(exc))
    for event in rt.events():
        if event.kind == "failed" and event.node.startswith(group.path + "."):
            print("failed", event.detail)
finally:
    rt.shutdown(timeout=5)
"""


@pytest.mark.timeout(60)
def test_a_failing_worker_leaves_its_traceback_to_its_group_not_to_stderr() -> None:
    done = run_python("-c", FAILING_GROUP_SCRIPT, timeout=50)
    lines = done.stdout.splitlines()
    assert lines[:2] == ["traceback True", "in message True"], done.stdout
    failed = lines[2:]
    assert len(failed) >= 3, done.stdout  # two workers, restarted until the group gave up
    assert set(failed) == {"failed exit code 1: ValueError: boom: this worker always fails"}
    assert "Traceback" not in done.stderr and "ValueError" not in done.stderr, done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["written", "unset", "unwritable"])
def test_a_worker_prints_its_traceback_only_when_it_could_not_leave_it(
    where: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from lessor.worker.bootstrap import ENV_TRACEBACK, Spawned, run_worker

    path = tmp_path / ("missing/tb" if where == "unwritable" else "tb")
    env = {} if where == "unset" else {ENV_TRACEBACK: str(path)}
    # No runtime to connect to: run_worker fails before it reaches the target.
    process = multiprocessing.get_context("spawn").Process(
        target=run_worker, args=(Spawned(t.done, ()), env)
    )
    process.start()
    process.join(30)
    assert process.exitcode == 1
    err = capfd.readouterr().err
    if where == "written":
        assert "Traceback (most recent call last)" in path.read_text()
        assert "Traceback" not in err, err
    else:
        assert not path.exists()
        assert "Traceback (most recent call last)" in err, err


@pytest.mark.timeout(90)
def test_spawn_workers_defaults_to_transient_so_a_finished_job_is_not_rerun(
    runtime: Runtime,
) -> None:
    group = runtime.spawn_workers(t.done, 1, max_restarts=0)
    assert runtime.join(group, timeout=30) is True
    kinds = [e.kind for e in runtime.events() if e.node.startswith(f"{group.path}.")]
    assert kinds == ["started", "exited", "removed"]


@pytest.mark.timeout(60)
def test_map_raises_workers_failed_when_its_workers_give_up(runtime: Runtime) -> None:
    errors = _errors()
    with pytest.raises(errors.WorkersFailed, match="cannot be rebuilt in a worker process"):
        runtime.map(t.NotHere(), [1, 2, 3], workers=1, max_restarts=0, timeout=30)
    assert wait_until(lambda: runtime.tree()["children"] == [])


@pytest.mark.timeout(60)
def test_map_fails_the_items_left_when_its_workers_exit_early(runtime: Runtime) -> None:
    results = runtime.map(t.exit_cleanly, [1, 2], workers=1, timeout=30, return_exceptions=True)
    assert len(results) == 2 and all(isinstance(r, TaskFailed) for r in results), results
    assert "no worker left" in str(results[1])


@pytest.mark.timeout(60)
def test_join_does_not_hang_when_the_runtime_shuts_down(tmp_path: Path) -> None:
    errors = _errors()
    rt = Runtime(handle_signals=False)
    rt.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
    group = rt.spawn_workers(t.hold_and_ignore, 1, args=("p", str(tmp_path)))
    assert wait_until((tmp_path / "ready").exists, timeout=30)
    outcome: list[Any] = []
    joiner = threading.Thread(target=lambda: outcome.append(_try(rt.join, group)))
    joiner.start()
    report = rt.shutdown(timeout=0.2)
    joiner.join(10)
    assert not joiner.is_alive()
    assert isinstance(outcome[0], errors.RuntimeStopped), outcome
    assert report.killed == (f"{group.path}.0.1",)


def test_the_planner_drops_a_failed_temporary_child_without_counting_it() -> None:
    planner = RestartPlanner("one_for_all", RestartIntensity(1, 60))
    types = ["permanent", "temporary"]
    for now in range(5):  # temporary failures neither restart nor count
        assert planner.child_exited(float(now), 1, True, types, [True, True]) == Remove(1)
    plan = planner.child_exited(5.0, 0, True, types, [True, True])  # one restart allowed
    assert isinstance(plan, Restart) and plan.remove == (1,)


# -- 5. pykka's errors stay inside ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_every_call_raises_a_lessor_error_once_the_root_is_gone() -> None:
    errors = _errors()
    rt = Runtime(handle_signals=False)
    try:
        rt.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
        pykka.ActorRegistry.stop_all()  # the root stops, not by the runtime's hand
        calls: list[Any] = [
            lambda: rt.add_pool(PoolSpec("q", TokenFactory(), max_size=1)),
            lambda: rt.add_child(ChildSpec("s", SupervisorSpec("s"))),
            rt.tree,
            lambda: rt.spawn_workers(t.done, 1),
            lambda: rt.map(abs, [1]),
        ]
        for call in calls:
            with pytest.raises(errors.RuntimeStopped):
                call()
    finally:
        report = rt.shutdown(timeout=1)
    assert report.duration_s < 5


# -- 7. the caller's own leases ------------------------------------------------------------


def test_shutdown_takes_back_its_own_callers_leases_at_once() -> None:
    rt = Runtime(handle_signals=False, shutdown_timeout=30)
    pool = rt.add_pool(PoolSpec("p", TokenFactory(), max_size=2))
    lease = pool.acquire(timeout=5)
    began = time.monotonic()
    report = rt.shutdown(timeout=5)
    assert time.monotonic() - began < 2
    assert [x.id for x in report.reclaimed_from_caller] == [lease.id]
    assert report.reclaimed == () and not report.clean
