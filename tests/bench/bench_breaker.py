"""Benchmark: a circuit breaker shared by worker processes, against pybreaker.

Run by hand from the repository root: ``python tests/bench/bench_breaker.py [--json]
[--pairs N] [--repeat R]``. All figures come from the same run on the same machine.
Targets: ``closed_overhead_us <= 1.0`` and ``<= pybreaker_overhead_us``;
``open_propagation_ms <= 5``.

Closed-state cost, per call, of guarding a trivial ``f`` (it returns a constant):
each figure is ``breaker.call(f)`` minus bare ``f()``, both timed over ``--pairs``
calls, the two (three in the runtime's process) taking turns; the median of the
differences over ``--repeat`` rounds of 3 turns each. A round is one worker, spawned
by ``runtime.map``, timing its turns, then the runtime's process timing its own.

- ``closed_overhead_us``: in a worker, ``lessor.connect().breaker(name).call(f)``;
- ``closed_overhead_inprocess_us``: in the runtime's process, ``runtime.breaker(name)``
  (its outcome batches are judged by the breaker's actor in this same process, so
  that work is in this figure; a worker's are judged in the runtime's process);
- ``pybreaker_overhead_us``: ``pybreaker.CircuitBreaker().call(f)``, in-process.

The closed state needs no round trip: a handle batches its outcomes and sends them one
way every ``report_interval`` (2 ms). The costs include that sending, amortized.

``open_propagation_ms``: how long a trip takes to reach every process. 4 worker
processes (``runtime.spawn_workers``) call ``breaker.call(ok)`` in a loop, sleeping
0.5 ms after each call (a modest rate, about 1-2k calls/s each), on a breaker with
``window_size=10, minimum_calls=5, failure_rate_threshold=50``. The runtime's process
makes ``window_size`` failing calls back to back (enough to trip whatever the workers
report meanwhile), takes ``time.monotonic()`` right after the last of them, and waits
until the last worker has seen the breaker open: each worker takes ``time.monotonic()``
in its ``on_state_change`` listener (run as the push changes the handle's view, on the
client's reading thread) and sends it on a multiprocessing queue passed to
``spawn_workers``. CLOCK_MONOTONIC is system-wide on Linux, so the clocks compare.
The breaker is reset between rounds, and the next round starts once every worker has
been pushed ``closed``. Reported: the median and max over ``--repeat`` * 2 rounds, and
each round (``open_propagation_ms_each``). The runtime's batch waits up to
``report_interval`` before it is sent, so that is part of the figure.
``open_local_ms``: the same for the runtime's own handle. ``open_propagation_busy_ms``:
the same with the workers calling in a tight loop, no sleep (4 busy processes on this
machine's cores: a stress case, no target).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import statistics
import time
from collections.abc import Callable
from typing import Any

import pybreaker
from common import Ops, cli, turns  # run as a script: this folder is on sys.path

import lessor
from lessor import Runtime
from lessor.errors import BreakerOpen
from lessor.specs import BreakerSpec

WORKERS = 4
#: Turns of each contender per round (the rounds are ``--repeat``).
TURNS = 3
PACED_SLEEP = 0.0005
#: How long a round waits for every worker to see a change before it gives up.
ROUND_TIMEOUT = 10.0
PROP = BreakerSpec(
    "prop", minimum_calls=5, window_size=10, failure_rate_threshold=50, open_duration=30
)


class Boom(Exception):
    """What the failing calls raise."""


def ok() -> int:
    return 1


def fail() -> int:
    raise Boom


def bare_calls(fn: Callable[[], Any]) -> Ops:
    def ops(k: int) -> None:
        for _ in range(k):
            fn()

    return ops


def guarded_calls(call: Callable[..., Any], fn: Callable[[], Any]) -> Ops:
    def ops(k: int) -> None:
        for _ in range(k):
            call(fn)

    return ops


def overheads(runs: dict[str, list[float]], name: str) -> list[float]:
    """Each turn's ``name`` minus the same turn's bare ``f()``."""
    return [guarded - bare for guarded, bare in zip(runs[name], runs["bare"], strict=True)]


#: Calls each contender makes before it is timed.
WARM = 20000


def closed_in_worker(job: list[Any]) -> dict[str, list[float]]:
    """In a worker: bare ``ok()`` and ``breaker.call(ok)`` taking turns (µs per call)."""
    name, n, count = job
    breaker = lessor.connect().breaker(name)
    return turns(
        {"bare": bare_calls(ok), "lessor": guarded_calls(breaker.call, ok)}, n, count, WARM
    )


def closed_overheads(runtime: Runtime, n: int, repeat: int) -> dict[str, list[float]]:
    """Per-turn overheads (µs): in a worker, in the runtime's process, and pybreaker's."""
    handle = runtime.breaker("closed")
    plain = pybreaker.CircuitBreaker()
    out: dict[str, list[float]] = {"worker": [], "inprocess": [], "pybreaker": []}
    for _ in range(repeat):  # a worker's turns, then this process's: the same noise
        remote = runtime.map(closed_in_worker, [["closed", n, TURNS]], workers=1)[0]
        out["worker"] += overheads(remote, "lessor")
        local = turns(
            {
                "bare": bare_calls(ok),
                "lessor": guarded_calls(handle.call, ok),
                "pybreaker": guarded_calls(plain.call, ok),
            },
            n,
            TURNS,
            WARM,
        )
        out["inprocess"] += overheads(local, "lessor")
        out["pybreaker"] += overheads(local, "pybreaker")
    return out


def watch_breaker(events: Any, stop: Any, paced: bool) -> None:
    """In a worker: call ``ok`` through breaker "prop" until ``stop``; report on ``events``
    each change this process is pushed, with the time its listener ran.

    Only the listener reports: a BreakerOpen caught here may come from a view read just
    before a push of ``closed`` and would be reported after it, out of order.
    """
    pid = os.getpid()
    breaker = lessor.connect().breaker(PROP.name)

    def changed(_name: str, _old: str, new: str) -> None:
        at = time.monotonic()
        events.put(("closed" if new == "closed" else "open", pid, at))

    breaker.on_state_change(changed)
    events.put(("closed", pid, time.monotonic()))  # subscribed: it was pushed its state
    call = breaker.call
    while not stop.is_set():
        for _ in range(100):
            with contextlib.suppress(BreakerOpen):  # the listener has reported it
                call(ok)
            if paced:
                time.sleep(PACED_SLEEP)


def _wait_all(events: Any, kind: str, pids: set[int] | None, want: int) -> dict[int, float]:
    """``kind`` events until ``want`` processes sent one: {pid: monotonic time}."""
    got: dict[int, float] = {}
    deadline = time.monotonic() + ROUND_TIMEOUT
    while len(got) < want:
        try:
            event, pid, at = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"{len(got)} of {want} workers saw {kind!r}") from None
        if event == kind and (pids is None or pid in pids):
            got.setdefault(pid, at)
    return got


def propagation(runtime: Runtime, rounds: int, paced: bool) -> dict[str, list[float]]:
    """Each round: ms from the runtime's tripping call to the last worker (and to this
    process's own handle) seeing the breaker open."""
    ctx = multiprocessing.get_context("spawn")
    events, stop = ctx.Queue(), ctx.Event()
    breaker = runtime.breaker(PROP.name)
    opened: list[float] = []
    breaker.on_state_change(
        lambda _n, old, new: opened.append(time.monotonic()) if old == "closed" else None
    )
    group = runtime.spawn_workers(watch_breaker, WORKERS, (events, stop, paced))
    out: dict[str, list[float]] = {"last": [], "first": [], "local": []}
    try:
        pids = set(_wait_all(events, "closed", None, WORKERS))
        for _ in range(rounds):
            time.sleep(0.05)  # the workers are calling and reporting
            opened.clear()
            for _ in range(PROP.window_size):
                with contextlib.suppress(Boom):
                    breaker.call(fail)
            tripped = time.monotonic()
            seen = _wait_all(events, "open", pids, WORKERS)
            out["last"].append((max(seen.values()) - tripped) * 1e3)
            out["first"].append((min(seen.values()) - tripped) * 1e3)
            out["local"].append((opened[0] - tripped) * 1e3 if opened else float("nan"))
            breaker.reset()
            _wait_all(events, "closed", pids, WORKERS)
    finally:
        stop.set()
        joined = runtime.join(group, timeout=30)
    if not joined:
        raise RuntimeError("the watching workers did not exit within 30 s")
    return out


def _ms(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]


def run(n: int, repeat: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    with Runtime(handle_signals=False) as runtime:
        runtime.add_breaker(BreakerSpec("closed"))
        runtime.add_breaker(PROP)  # both before any worker: specs travel at spawn
        closed = closed_overheads(runtime, n, repeat)
        paced = propagation(runtime, repeat * 2, paced=True)
        busy = propagation(runtime, repeat * 2, paced=False)
    median = statistics.median
    worker_us, pybreaker_us = median(closed["worker"]), median(closed["pybreaker"])
    return {
        "closed_overhead_us": round(worker_us, 3),
        "closed_overhead_inprocess_us": round(median(closed["inprocess"]), 3),
        "pybreaker_overhead_us": round(pybreaker_us, 3),
        "ratio_to_pybreaker": round(worker_us / pybreaker_us, 3),
        "closed_overhead_us_each": [round(v, 3) for v in closed["worker"]],
        "open_propagation_ms": round(median(paced["last"]), 2),
        "open_propagation_max_ms": round(max(paced["last"]), 2),
        "open_propagation_ms_each": _ms(paced["last"]),
        "open_propagation_first_ms": round(median(paced["first"]), 2),
        "open_local_ms": round(median(paced["local"]), 2),
        "open_propagation_busy_ms": round(median(busy["last"]), 2),
        "open_propagation_busy_max_ms": round(max(busy["last"]), 2),
        "open_propagation_busy_ms_each": _ms(busy["last"]),
        "note": "overheads: breaker.call(f) minus f(), f returns a constant, closed state, "
        "median of per-turn differences; propagation: from just after the runtime's "
        f"{PROP.window_size} back-to-back failing calls to the last of {WORKERS} workers "
        f"seeing open, workers calling every {PACED_SLEEP * 1e3:g} ms (busy: no sleep)",
        "targets": {"closed_overhead_us": "<= 1.0 and <= pybreaker", "open_propagation_ms": "<= 5"},
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(load, 2),
    }


if __name__ == "__main__":
    cli(__doc__, run, pairs=100_000, repeat=5)
