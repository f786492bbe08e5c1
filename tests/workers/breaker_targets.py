"""Worker targets for the circuit-breaker tests: module-level, so spawn can import them.

Each writes what it saw to ``<out_dir>/<pid>.log``, one line per event, with
``time.monotonic()`` stamps (the clock is system-wide on Linux, so the test compares
them with its own)::

    start <t> <state>            the worker's handle is subscribed
    state <t> <old> <new>        a change pushed to this worker
    refused <t> <state>          the first refusal since the last change
    done <t> <calls>             the worker saw the stop file and returns
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO

import requests

import lessor
from lessor.errors import BreakerOpen, LessorError

POLL = 0.005  # seconds between looks at a file the test creates


class _Log:
    def __init__(self, out_dir: str) -> None:
        self._file: IO[str] = open(  # noqa: SIM115 - open for the worker's life
            os.path.join(out_dir, f"{os.getpid()}.log"), "a", buffering=1
        )
        self._lock = threading.Lock()

    def write(self, *fields: object) -> None:
        with self._lock:
            self._file.write(" ".join(map(str, fields)) + "\n")


def _wait_for(path: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def http_caller(url: str, out_dir: str, pace: float = 0.004) -> None:
    """GET ``url`` through breaker "api" until ``<out_dir>/stop`` exists (or a drain).

    A 5xx answer is a failure (raise_for_status). In the closed state the calls are
    paced ``pace`` seconds apart (load, not synchronisation); after a refusal the worker
    waits for the next pushed change, looking again every 20 ms.
    """
    log = _Log(out_dir)
    client = lessor.connect()
    breaker = client.breaker("api")
    changed = threading.Event()
    changes = [0]

    def on_change(_name: str, old: str, new: str) -> None:
        log.write("state", repr(time.monotonic()), old, new)
        changes[0] += 1
        changed.set()

    breaker.on_state_change(on_change)
    log.write("start", repr(time.monotonic()), breaker.state)
    session = requests.Session()
    headers = {"X-Pid": str(os.getpid())}

    def get() -> int:
        response = session.get(url, headers=headers, timeout=30)
        response.raise_for_status()
        return response.status_code

    stop = os.path.join(out_dir, "stop")
    calls, refused_after = 0, -1
    try:
        while not os.path.exists(stop) and not client.draining.is_set():
            calls += 1
            try:
                breaker.call(get)
            except BreakerOpen:
                if refused_after != changes[0]:
                    refused_after = changes[0]
                    log.write("refused", repr(time.monotonic()), breaker.state)
                changed.wait(0.02)
                changed.clear()
                continue
            except requests.RequestException:
                pass
            time.sleep(pace)
    finally:
        session.close()
    log.write("done", repr(time.monotonic()), calls)


def probe_holder(out_dir: str) -> None:
    """Once breaker "api" is half-open, make one probe call.

    The first incarnation (it creates ``<out_dir>/hang``) blocks for ever inside its
    probe, holding the permit, after writing ``<out_dir>/probing`` (its pid): the test
    SIGKILLs it. A later incarnation waits for ``<out_dir>/go``, then probes for real
    and logs ``probed`` (or ``refused``).
    """
    log = _Log(out_dir)
    breaker = lessor.connect().breaker("api")
    half_open = threading.Event()
    breaker.on_state_change(lambda _n, _o, new: half_open.set() if new == "half_open" else None)
    log.write("start", repr(time.monotonic()), breaker.state)
    try:
        os.close(os.open(os.path.join(out_dir, "hang"), os.O_CREAT | os.O_EXCL))
        hang = True
    except FileExistsError:
        hang = False
    if not hang and not _wait_for(os.path.join(out_dir, "go")):
        raise TimeoutError("no go file")
    if breaker.state != "half_open" and not half_open.wait(60):
        raise TimeoutError(f"breaker never half-open (it is {breaker.state})")

    def probe() -> str:
        if hang:
            with open(os.path.join(out_dir, "probing"), "w") as out:
                out.write(str(os.getpid()))
            threading.Event().wait()  # until SIGKILL
        return "ok"

    try:
        log.write("probed", repr(time.monotonic()), breaker.call(probe))
    except BreakerOpen as exc:
        log.write("refused", repr(time.monotonic()), exc)


def lookup(names: list[str], out_dir: str) -> None:
    """Once ``<out_dir>/go`` exists, look each breaker up; log ``name state`` or the error."""
    log = _Log(out_dir)
    client = lessor.connect()
    if not _wait_for(os.path.join(out_dir, "go")):
        raise TimeoutError("no go file")
    for name in names:
        try:
            log.write(name, client.breaker(name).state)
        except LessorError as exc:
            log.write(name, f"{type(exc).__name__}: {exc}")


def asking_listener(out_dir: str) -> None:
    """A state listener that asks the runtime (stats) when the breaker changes: log
    ``seen <state> <calls>`` from the listener, ``done`` once it has run."""
    log = _Log(out_dir)
    breaker = lessor.connect().breaker("api")
    answered = threading.Event()

    def listener(_name: str, _old: str, new: str) -> None:
        stats = breaker.stats()  # a round trip from inside a listener
        log.write("seen", new, stats.calls)
        answered.set()

    breaker.on_state_change(listener)
    log.write("ready")
    if not answered.wait(60):
        raise TimeoutError("the listener never finished")
    log.write("done")
