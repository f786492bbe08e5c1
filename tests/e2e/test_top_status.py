"""``lessor status`` and ``lessor top`` against a runtime running in another process
(tests/workers/control_runtime.py), and who may attach to it: only a holder of its
control key, which reads the runtime and reaches nothing else."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

import lessor
from lessor.cli.top import add_parsers, run_status, run_top
from lessor.errors import NoSuchPool
from lessor.protocol import wire
from lessor.protocol.messages import Describe, ErrorReply, GetStatus, Message, PoolInfo, Status
from lessor.protocol.wire import Kind
from lessor.runtime.status import walk
from lessor.transport.control import KEY_FILE, ControlClient, ControlError, find_runtimes
from lessor.transport.handshake import open_connection
from lessor.transport.node import ENV_AUTHKEY

ROOT = Path(__file__).parents[2]
#: ``lessor top`` as its own process, wired as lessor/cli/__init__.py wires it.
TOP = (
    "import argparse, sys\n"
    "from lessor.cli.top import add_parsers, run_top\n"
    "parser = argparse.ArgumentParser(prog='lessor')\n"
    "add_parsers(parser.add_subparsers(dest='command', required=True))\n"
    "sys.exit(run_top(parser.parse_args(sys.argv[1:])))\n"
)


@dataclass
class Remote:
    """A runtime in another process: its pid, socket and workers' pids."""

    pid: int
    socket: str
    workers: list[int]
    process: subprocess.Popen[str]

    @property
    def key_file(self) -> Path:
        return Path(self.socket).parent / KEY_FILE


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry of runtimes of this test's own (never the home directory's)."""
    path = tmp_path / "runtimes"
    monkeypatch.setenv("LESSOR_RUNTIME_DIR", str(path))
    return path


def _line(stream: Any, timeout: float) -> str:
    """The next line of a child's pipe ("" if none comes in time)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


@contextlib.contextmanager
def remote(tmp_path: Path, workers: int = 0) -> Iterator[Remote]:
    """Start tests/workers/control_runtime.py; on leaving, close its stdin and wait."""
    log = (tmp_path / "runtime.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.workers.control_runtime", str(workers),
         str(tmp_path / "stop")], cwd=ROOT, text=True, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        line = _line(process.stdout, 30)
        log.seek(0)
        assert line, f"the runtime did not start: {log.read()}"
        ready = json.loads(line)
        assert len(ready["workers"]) == workers
        yield Remote(ready["pid"], ready["socket"], ready["workers"], process)
    finally:
        end(process)
        log.close()


def end(process: subprocess.Popen[str]) -> int:
    """Close the runtime's stdin (it shuts down) and wait; kill it if it will not go."""
    with contextlib.suppress(OSError):
        assert process.stdin is not None
        process.stdin.close()
    try:
        return process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lessor")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_status_json_is_the_tree_with_the_worker_pids(
    registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with remote(tmp_path, workers=2) as rt:
        key = rt.key_file.read_text().strip()
        assert rt.key_file.stat().st_mode & 0o777 == 0o600
        for how in ((), ("--pid", str(rt.pid)), ("--socket", rt.socket)):
            assert run_status(cli("status", "--json", *how)) == 0, how
            out, err = capsys.readouterr()
            body = json.loads(out)
            assert body["pid"] == rt.pid
            processes = [n for n in walk(body["tree"]) if n["kind"] == "process"]
            assert sorted(n["pid"] for n in processes) == sorted(rt.workers)
            assert all(n["leases"] == {"slots": 1} and n["state"] == "running"
                       for n in processes)  # fmt: skip
            assert body["pools"]["slots"]["stats"]["leased"] == 2
            assert body["breakers"]["api"]["state"] == "closed"
            assert body["batchers"]["rows"]["pending"] == 5
            assert key not in out + err


def test_top_once_and_status_draw_one_frame(
    registry: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # rich's width off a terminal: a line per node
    with remote(tmp_path, workers=2) as rt:
        key = rt.key_file.read_text().strip()
        for run, argv, title in ((run_top, ("top", "--once"), "lessor top"),
                                 (run_status, ("status",), "lessor status")):  # fmt: skip
            assert run(cli(*argv, "--pid", str(rt.pid))) == 0
            out, err = capsys.readouterr()
            assert out.startswith(f"{title}  pid {rt.pid}"), out
            assert "root/workers-1 workers running" in out
            for pid in rt.workers:
                assert f"pid {pid} leases slots=1" in out
            for part in ("root/slots pool", "root/breaker:api", "root/batcher:rows"):
                assert part in out
            assert key not in out + err


def test_attaching_without_the_key_is_refused(
    registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No key, or a wrong one (tests may run as root: a 0600 file does not stop them,
    so the key is taken away or replaced): exit 2, naming the key file, never a key."""
    with remote(tmp_path) as rt:
        key = rt.key_file.read_text().strip()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "node.sock").symlink_to(rt.socket)  # the same socket, another key file
        wrong = "ab" * 32
        for key_there, run, command in ((None, run_status, "status"), (wrong, run_top, "top")):
            if key_there:
                (elsewhere / KEY_FILE).write_text(key_there)
            assert run(cli(command, "--socket", str(elsewhere / "node.sock"))) == 2
            out, err = capsys.readouterr()
            assert out == ""
            assert err.startswith(f"lessor {command}: ") and err.count("\n") == 1
            assert str(elsewhere / KEY_FILE) in err
            assert key not in err and wrong not in err

        hidden = rt.key_file.with_name("moved")
        rt.key_file.rename(hidden)  # the runtime's own key file gone
        try:
            assert run_status(cli("status", "--json", "--pid", str(rt.pid))) == 2
            out, err = capsys.readouterr()
            assert out == "" and str(rt.key_file) in err and key not in err
        finally:
            hidden.rename(rt.key_file)
        assert run_status(cli("status", "--json", "--pid", str(rt.pid))) == 0  # key back: in
        assert json.loads(capsys.readouterr().out)["pid"] == rt.pid


def test_control_client_reports_a_wrong_key_as_a_control_error(
    registry: Path, tmp_path: Path
) -> None:
    with remote(tmp_path) as rt:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "node.sock").symlink_to(rt.socket)
        (elsewhere / KEY_FILE).write_text("ab" * 32)
        with pytest.raises(ControlError, match=KEY_FILE):
            ControlClient(str(elsewhere / "node.sock"), timeout=5)


def test_no_runtime_and_stale_entries(
    registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A registry entry whose pid is dead is skipped (and removed): with one live
    runtime, that one is picked; with none, there is nothing to attach to."""
    assert run_status(cli("status", "--json")) == 2
    assert "no lessor runtime to attach to" in capsys.readouterr().err
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with remote(tmp_path) as rt:
        stale = registry / f"{dead.pid}.json"
        stale.write_text(json.dumps({"pid": dead.pid, "socket": rt.socket, "started": 0,
                                     "argv": ["dead"]}))  # fmt: skip
        assert [e.pid for e in find_runtimes()] == [rt.pid]
        assert not stale.exists()
        stale.write_text(json.dumps({"pid": dead.pid, "socket": rt.socket, "started": 0}))
        assert run_status(cli("status", "--json")) == 0
        assert json.loads(capsys.readouterr().out)["pid"] == rt.pid
        assert run_status(cli("status", "--pid", str(dead.pid))) == 2
        assert f"no lessor runtime with pid {dead.pid}" in capsys.readouterr().err


def _top(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", TOP, "top", *argv], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_top_on_a_pipe_prints_lines_until_the_runtime_goes_away(
    registry: Path, tmp_path: Path
) -> None:
    """Not a terminal: one plain line per interval; the runtime shutting down ends top
    with 0 and a message; its registry entry, key file and socket are gone."""
    with remote(tmp_path) as rt:
        top = _top("--pid", str(rt.pid), "--interval", "0.1")
        try:
            lines = [_line(top.stdout, 10) for _ in range(2)]
            want = "lessor: restarts 0, pools slots 0/4 leased, breaker api closed, batch rows"
            assert all(line.startswith(f"{want} pending 5") for line in lines), lines
            assert end(rt.process) == 0
            assert top.wait(15) == 0
            assert top.stderr is not None
            err = top.stderr.read()
            assert f"lessor top: the runtime (pid {rt.pid}) has gone away" in err
            assert "Traceback" not in err
        finally:
            if top.poll() is None:
                top.kill()
            top.communicate()
        assert not (registry / f"{rt.pid}.json").exists()
        assert not rt.key_file.exists() and not os.path.exists(rt.socket)
        assert list(registry.iterdir()) == []


def test_ctrl_c_ends_top_with_0(registry: Path, tmp_path: Path) -> None:
    with remote(tmp_path) as rt:
        top = _top("--socket", rt.socket, "--interval", "0.1")
        try:
            assert _line(top.stdout, 10).startswith("lessor: ")
            top.send_signal(signal.SIGINT)
            assert top.wait(10) == 0
        finally:
            if top.poll() is None:
                top.kill()
            _, err = top.communicate()
        assert "Traceback" not in err


def test_top_on_a_terminal_redraws_in_place(registry: Path, tmp_path: Path) -> None:
    """A terminal (a pty): rich's live view, redrawn every interval, until Ctrl-C."""
    with remote(tmp_path, workers=1) as rt:
        master, slave = os.openpty()
        top = subprocess.Popen(
            [sys.executable, "-c", TOP, "top", "--pid", str(rt.pid), "--interval", "0.1"],
            cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160", "LINES": "60",
                 "TERM": "xterm"},
        )  # fmt: skip
        os.close(slave)
        seen, deadline = b"", time.monotonic() + 15
        try:
            while seen.count(b"lessor top (every 0.1s") < 3:  # three frames drawn
                ready, _, _ = select.select([master], [], [], 1)
                assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
                if ready:
                    seen += os.read(master, 65536)
            top.send_signal(signal.SIGINT)
            assert top.wait(10) == 0
        finally:
            if top.poll() is None:
                top.kill()
                top.wait()
            with contextlib.suppress(OSError):
                while select.select([master], [], [], 0.1)[0]:
                    seen += os.read(master, 65536)
            os.close(master)
        text = seen.decode(errors="replace")
        assert "\x1b[" in text  # drawn in place, in colour
        assert f"pid {rt.workers[0]}" in text and "slots=1" in text
        assert "Traceback" not in text


def _ask(conn: Connection, target: str, message: Message) -> tuple[Kind, Any]:
    conn.send_bytes(wire.frame(Kind.ASK, 1, target, message))
    assert conn.poll(10), "no answer"
    kind, corr, _, answer = wire.parse(conn.recv_bytes(wire.MAX_FRAME))
    assert corr == 1
    return kind, answer


def test_the_control_key_only_reads_and_a_worker_key_never_reaches_control(
    registry: Path,
) -> None:
    with lessor.Runtime(control=True) as runtime:
        runtime.add_pool(lessor.PoolSpec("slots", lessor.TokenFactory(), max_size=2))
        address = runtime.serve_control()
        key_file = Path(address).parent / KEY_FILE
        control_key = bytes.fromhex(key_file.read_text())
        worker_id = "root/spy.0.1"
        worker_key = bytes.fromhex(runtime.node.env(worker_id)[ENV_AUTHKEY])

        worker = open_connection(address, worker_key, worker_id)
        try:
            kind, answer = _ask(worker, "slots", Describe("slots"))
            assert kind == Kind.REPLY and isinstance(answer, PoolInfo)  # a worker reaches pools
            kind, answer = _ask(worker, "control:status", GetStatus())
            assert kind == Kind.ERROR and isinstance(answer, ErrorReply)
            assert answer.error == NoSuchPool.__name__
        finally:
            worker.close()
        with pytest.raises((AuthenticationError, EOFError, OSError, lessor.LessorError)):
            open_connection(address, worker_key, "control/spy").close()  # not its key

        control = open_connection(address, control_key, "control/test")
        try:
            kind, answer = _ask(control, "control:status", GetStatus())
            assert kind == Kind.REPLY and isinstance(answer, Status)
            assert answer.body["pools"]["slots"]["max_size"] == 2
            kind, answer = _ask(control, "slots", Describe("slots"))
            assert kind == Kind.ERROR and isinstance(answer, ErrorReply)
            assert answer.error == NoSuchPool.__name__
        finally:
            control.close()
        entry = registry / f"{os.getpid()}.json"
        assert entry.exists() and entry.stat().st_mode & 0o777 == 0o600
    assert not entry.exists() and not key_file.exists()
