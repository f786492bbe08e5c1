"""One circuit breaker shared by real worker processes that call a real HTTP server.

The server (127.0.0.1, ``http.server``) can be switched between answering, failing
(500) and holding requests; it counts what reaches it, so the tests judge the breaker
by what its dependency saw. Workers run tests/workers/breaker_targets.py and log what
their handles were pushed, with ``time.monotonic()`` stamps comparable with ours.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lessor import Runtime
from lessor.errors import BreakerOpen
from lessor.protocol.messages import BreakerStats
from lessor.specs import BreakerSpec
from lessor.supervisor.workers import WorkerPids
from tests.support.helpers import serving, wait_until
from tests.workers import breaker_targets, targets

START_BOUND = 60.0  # seconds for spawned workers to be up (spawn imports everything)


class Server(ThreadingHTTPServer):
    """``mode``: "ok", "fail" (every answer a 500), "every3" (every third one a 500) or
    "hold" (requests wait for ``release``, then are answered as the mode then says)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.mode = "ok"
        self.requests = 0
        self.by_pid: dict[str, int] = {}  # requests per worker (the X-Pid header)
        self.failed_at: list[float] = []  # time.monotonic() as each 500 went out
        self.held: list[str] = []  # the pid of each request that arrived in hold mode
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def switch(self, mode: str) -> None:
        with self.lock:
            self.mode = mode


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per worker session
    disable_nagle_algorithm = True  # headers and body go out as two writes
    server: Server

    def do_GET(self) -> None:
        srv = self.server
        pid = self.headers.get("X-Pid", "?")
        with srv.lock:
            srv.requests += 1
            number = srv.requests
            srv.by_pid[pid] = srv.by_pid.get(pid, 0) + 1
            mode = srv.mode
            if mode == "hold":
                srv.held.append(pid)
        if mode == "hold":
            srv.release.wait(30)
            with srv.lock:
                mode = srv.mode
        failing = mode == "fail" or (mode == "every3" and number % 3 == 0)
        body = b"down" if failing else b"ok"
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if failing:
            with srv.lock:
                srv.failed_at.append(time.monotonic())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(max_restarts=10, handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


@pytest.fixture
def server() -> Iterator[Server]:
    """Ask for it after ``runtime``: it stops first, so no worker waits on a held request."""
    with serving(Server()) as srv:
        yield srv


class Logs:
    """The workers' logs in ``directory`` (see tests/workers/breaker_targets.py)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def pids(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.log"))

    def lines(self, pid: int) -> list[list[str]]:
        path = self.dir / f"{pid}.log"
        text = path.read_text() if path.exists() else ""
        whole = text[: text.rfind("\n") + 1]  # a line being written is not read yet
        return [line.split(" ") for line in whole.splitlines()]

    def changes(self, pid: int) -> list[tuple[str, str]]:
        return [(f[2], f[3]) for f in self.lines(pid) if f[0] == "state" and len(f) == 4]

    def changed_at(self, pid: int, new: str) -> float | None:
        """When this worker was first pushed ``new``."""
        for f in self.lines(pid):
            if f[0] == "state" and len(f) == 4 and f[3] == new:
                return float(f[1])
        return None

    def refused_in(self, pid: int, state: str) -> bool:
        return any(f[0] == "refused" and f[2:] == [state] for f in self.lines(pid))

    def first(self, pid: int, kind: str) -> list[str] | None:
        return next((f for f in self.lines(pid) if f[0] == kind), None)


def worker_pids(group: Any) -> list[int]:
    return list(group.current(5).ask(WorkerPids(), timeout=5))


def replaced(group: Any, victim: int, size: int) -> bool:
    """Wait until the group runs ``size`` workers again, ``victim`` not among them."""
    return wait_until(
        lambda: victim not in (now := worker_pids(group)) and len(now) == size, timeout=30
    )


def stop(runtime: Runtime, group: Any, out_dir: Path) -> None:
    """Tell the http_caller workers to return, and wait for them."""
    (out_dir / "stop").touch()
    assert runtime.join(group, timeout=30)


# -- the trip, the probes and the recovery, seen by every process -----------------------

WINDOW, CROSSING = 20, 10  # 10 failures take a window of 20 successes to 50%
PROPAGATION_INTERVALS = 20  # the bound: this many report intervals (the spec says ~one)


def test_every_worker_sees_the_trip_then_exactly_n_probes_then_recovery(
    runtime: Runtime, server: Server, tmp_path: Path, record_property: Any
) -> None:
    spec = BreakerSpec(
        "api", window_size=WINDOW, minimum_calls=WINDOW, failure_rate_threshold=50.0,
        open_duration=1.0, half_open_calls=2,
    )  # fmt: skip
    parent = runtime.add_breaker(spec)
    opened_here: list[float] = []
    parent.on_state_change(
        lambda _n, _o, new: opened_here.append(time.monotonic()) if new == "open" else None
    )
    logs = Logs(tmp_path)
    group = runtime.spawn_workers(
        breaker_targets.http_caller, 4, args=(f"{server.url}/work", str(tmp_path))
    )
    assert wait_until(
        lambda: len(logs.pids()) == 4 and all(logs.first(p, "start") for p in logs.pids()),
        timeout=START_BOUND,
    )
    pids = logs.pids()
    assert [logs.first(p, "start")[2] for p in pids] == ["closed"] * 4  # type: ignore[index]
    # Every worker is calling, and the window is full of successes.
    assert wait_until(
        lambda: parent.stats().calls >= 2 * WINDOW and len(server.by_pid) == 4, timeout=30
    )
    assert parent.stats().failures == 0 and parent.state == "closed"

    server.switch("fail")
    assert wait_until(lambda: all(logs.changed_at(p, "open") for p in pids), timeout=10), [
        logs.lines(p) for p in pids
    ]
    assert wait_until(lambda: opened_here, timeout=5)  # this process is pushed too
    with server.lock:
        failed_at = sorted(server.failed_at)
    assert len(failed_at) >= CROSSING
    crossing = failed_at[CROSSING - 1]  # the earliest failure that can cross the threshold
    delays = {p: logs.changed_at(p, "open") - crossing for p in pids}  # type: ignore[operator]
    bound = PROPAGATION_INTERVALS * spec.report_interval
    record_property("report_interval_ms", 1000 * spec.report_interval)
    record_property("crossing_to_open_ms", {p: round(1000 * d, 2) for p, d in delays.items()})
    record_property("crossing_to_parent_open_ms", round(1000 * (opened_here[0] - crossing), 2))
    record_property(
        "parent_open_to_worker_open_ms",
        {p: round(1000 * (logs.changed_at(p, "open") - opened_here[0]), 2) for p in pids},  # type: ignore[operator]
    )
    record_property("failures_before_parent_open", sum(t <= opened_here[0] for t in failed_at))
    print(f"crossing failure -> each worker open: "
          f"{sorted(round(1000 * d, 2) for d in delays.values())} ms")  # fmt: skip
    assert all(0 <= d < bound for d in delays.values()), (delays, bound)

    # Once every worker has been refused while open, none has a closed-state call in
    # flight: from now on only probes can reach the server, and it holds them.
    assert wait_until(lambda: all(logs.refused_in(p, "open") for p in pids), timeout=10)
    server.switch("hold")
    assert parent.stats().probes == 0, "the open state ended before the server held requests"
    assert wait_until(lambda: parent.state == "half_open", timeout=10)
    assert wait_until(lambda: len(server.held) == 2, timeout=10)
    # The workers not holding a probe keep asking and are refused, in half-open.
    assert wait_until(
        lambda: (
            {str(p) for p in pids if logs.refused_in(p, "half_open")} | set(server.held)
            == {str(p) for p in pids}
        ),
        timeout=10,
    ), (server.held, [logs.lines(p) for p in pids])
    rejected = parent.stats().rejected
    assert wait_until(lambda: parent.stats().rejected >= rejected + 10, timeout=10)
    stats = parent.stats()
    assert len(server.held) == 2 and len(set(server.held)) == 2  # two processes, one probe each
    assert (stats.state, stats.probes, stats.probes_out) == ("half_open", 2, 2)
    record_property("refused_in_half_open", stats.rejected - rejected)

    server.switch("ok")
    server.release.set()
    assert wait_until(lambda: all(logs.changed_at(p, "closed") for p in pids), timeout=10)
    assert wait_until(lambda: parent.state == "closed", timeout=5)
    for p in pids:
        assert logs.changes(p) == [("closed", "open"), ("open", "half_open"),
                                   ("half_open", "closed")], logs.lines(p)  # fmt: skip
    calls = parent.stats().calls
    assert wait_until(lambda: parent.stats().calls >= calls + 20, timeout=10)  # calls flow again
    stop(runtime, group, tmp_path)
    stats = parent.stats()
    assert (stats.state, stats.trips, stats.probes, stats.probes_out) == ("closed", 1, 2, 0)
    # The workers' subscriptions end with their connections.
    assert wait_until(lambda: parent.stats().subscribers == 1, timeout=5)


# -- process churn -----------------------------------------------------------------------


def test_shared_counters_survive_workers_being_killed_and_restarted(
    runtime: Runtime, server: Server, tmp_path: Path
) -> None:
    server.switch("every3")  # a third of the calls fail: counted, never enough to trip
    parent = runtime.add_breaker(
        BreakerSpec("api", window_size=60, minimum_calls=60, failure_rate_threshold=60.0)
    )
    logs = Logs(tmp_path)
    group = runtime.spawn_workers(
        breaker_targets.http_caller, 3, args=(f"{server.url}/work", str(tmp_path))
    )
    samples: list[BreakerStats] = []

    def sample() -> BreakerStats:
        samples.append(parent.stats())
        return samples[-1]

    assert wait_until(lambda: sample().calls >= 60, timeout=START_BOUND)
    for _ in range(4):
        victim = worker_pids(group)[0]
        calls = sample().calls
        assert samples[-1].failures > 0
        os.kill(victim, signal.SIGKILL)
        assert replaced(group, victim, 3)
        # The replacement joins in, and the counts carry on from where they were.
        assert wait_until(lambda c=calls: sample().calls >= c + 60, timeout=30)
    live = worker_pids(group)
    assert wait_until(lambda: all(server.by_pid.get(str(p), 0) > 0 for p in live), timeout=10)
    for field in ("calls", "failures", "generation"):
        values = [getattr(s, field) for s in samples]
        assert values == sorted(values), f"{field} went backwards: {values}"
    last = sample()
    assert (last.state, last.trips) == ("closed", 0)
    assert last.calls >= samples[0].calls + 4 * 60
    assert 0.2 < last.failures / last.calls < 0.5  # a third, give or take the lost batches
    assert wait_until(lambda: parent.stats().subscribers == 4, timeout=10)  # parent + 3 live

    # A worker restarted while the breaker is open starts open: it never calls.
    parent.force_open()
    assert wait_until(lambda: all(logs.changed_at(p, "forced_open") for p in live), timeout=10)
    victim = live[0]
    os.kill(victim, signal.SIGKILL)
    assert replaced(group, victim, 3)
    (fresh,) = set(worker_pids(group)) - set(live)
    assert wait_until(lambda: logs.first(fresh, "refused") is not None, timeout=START_BOUND)
    assert logs.first(fresh, "start")[2] == "forced_open"  # type: ignore[index]
    assert str(fresh) not in server.by_pid
    parent.reset()
    assert wait_until(lambda: server.by_pid.get(str(fresh), 0) > 0, timeout=10)
    stop(runtime, group, tmp_path)


def test_a_worker_killed_holding_a_probe_gives_its_permit_back(
    runtime: Runtime, tmp_path: Path, record_property: Any
) -> None:
    parent = runtime.add_breaker(
        BreakerSpec("api", window_size=2, minimum_calls=2, open_duration=0.2, half_open_calls=1)
    )
    logs = Logs(tmp_path)
    group = runtime.spawn_workers(breaker_targets.probe_holder, 1, args=(str(tmp_path),))
    assert wait_until(lambda: len(logs.pids()) == 1, timeout=START_BOUND)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            parent.call(_fail)
    assert wait_until(lambda: parent.state == "open", timeout=5)
    probing = tmp_path / "probing"
    assert wait_until(lambda: probing.exists() and probing.read_text() != "", timeout=10)
    holder = int(probing.read_text())
    stats = parent.stats()
    assert (stats.state, stats.probes, stats.probes_out) == ("half_open", 1, 1)
    with pytest.raises(BreakerOpen, match="every probe permit taken"):
        parent.call(lambda: "a second probe")

    os.kill(holder, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_until(lambda: parent.stats().probes_out == 0, timeout=5, interval=0.001)
    record_property("permit_back_after_sigkill_ms", round(1000 * (time.monotonic() - killed), 2))
    assert parent.state == "half_open"  # the lost probe decided nothing

    # The restarted worker gets the free permit; its probe succeeds and closes the breaker.
    assert wait_until(lambda: len(logs.pids()) == 2, timeout=START_BOUND)
    (tmp_path / "go").touch()
    assert wait_until(lambda: parent.state == "closed", timeout=10)
    assert runtime.join(group, timeout=30)
    (fresh,) = set(logs.pids()) - {holder}
    assert logs.first(fresh, "probed")[2] == "ok"  # type: ignore[index]
    stats = parent.stats()
    assert (stats.probes, stats.probes_out, stats.trips, stats.calls) == (2, 0, 1, 3)


def _fail() -> None:
    raise RuntimeError("down")


# -- what a worker can look up, and bad input --------------------------------------------


def test_a_worker_knows_the_breakers_added_before_it_was_spawned(
    runtime: Runtime, tmp_path: Path
) -> None:
    runtime.add_breaker(BreakerSpec("api"))
    group = runtime.spawn_workers(
        breaker_targets.lookup, 1, args=(["api", "late", "nope"], str(tmp_path))
    )
    runtime.add_breaker(BreakerSpec("late"))  # after the spawn: that worker never hears of it
    (tmp_path / "go").touch()
    assert runtime.join(group, timeout=START_BOUND)
    (pid,) = Logs(tmp_path).pids()
    found = {f[0]: " ".join(f[1:]) for f in Logs(tmp_path).lines(pid)}
    assert found["api"] == "closed"
    assert found["late"].startswith("NoSuchBreaker: no breaker named 'late'")
    assert found["nope"].startswith("NoSuchBreaker: no breaker named 'nope'")


def test_a_workers_listener_may_ask_the_runtime(runtime: Runtime, tmp_path: Path) -> None:
    """Pushes are read under the connection's read lock: a listener run there that asked
    anything would wait for its own reply. A worker's listeners run elsewhere."""
    breaker = runtime.add_breaker(BreakerSpec("api"))
    group = runtime.spawn_workers(breaker_targets.asking_listener, 1, args=(str(tmp_path),))
    logs = Logs(tmp_path)
    assert wait_until(lambda: any(f == ["ready"] for p in logs.pids() for f in logs.lines(p)),
                      timeout=START_BOUND)  # fmt: skip
    breaker.force_open()
    assert runtime.join(group, timeout=10)  # an answered listener; not a 30 s request timeout
    (pid,) = logs.pids()
    assert ["seen", "forced_open", "0"] in logs.lines(pid)
    assert logs.lines(pid)[-1] == ["done"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_rate_threshold", 0),
        ("failure_rate_threshold", 100.5),
        ("slow_call_rate_threshold", -1),
        ("open_duration", -1.0),
        ("slow_call_duration", -0.5),
        ("half_open_calls", 0),
    ],
)
def test_bad_breaker_specs_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{field} "):
        BreakerSpec("api", **{field: value})


def test_an_error_filter_that_cannot_pickle_is_refused_at_spawn(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(BreakerSpec("api", record_errors=lambda exc: True))
    assert breaker.call(lambda: 1) == 1  # in this process it is fine
    with pytest.raises(
        TypeError, match=r"breaker 'api' cannot reach worker processes.*must pickle"
    ):
        runtime.spawn_workers(targets.fail, 1, args=(0,))
    with pytest.raises(TypeError, match="must pickle"):
        runtime.map(targets.square, [1, 2])
    assert [e for e in runtime.events() if "workers" in e.node or "map" in e.node] == []
