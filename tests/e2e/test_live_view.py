"""The live view (lessor/cli/view.py) drawn in a test terminal (rich's
``Console(record=True)``): a real runtime's snapshot shows every part of its tree, and
a snapshot with parts missing still draws."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text

import lessor
from lessor.cli.view import plain_line, render, short_holder
from lessor.runtime.status import walk
from tests.workers.control_runtime import hold, holding, keep


def _text(status: dict[str, Any], width: int = 160, **kw: Any) -> str:
    console = Console(record=True, width=width)
    console.print(render(status, **kw))
    return console.export_text()


def _row(text: str, *cells: str) -> bool:
    """Whether one line of ``text`` holds ``cells`` in order, as table cells."""
    pattern = r"\s*│\s*".join(re.escape(c) for c in cells)
    return any(re.search(rf"(^|│)\s*{pattern}\s*(│|$)", line) for line in text.splitlines())


@pytest.fixture
def status(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A running runtime's snapshot: a pool ``slots`` held by 2 workers and this thread, a
    breaker ``api``, a batcher ``rows`` with 12 items pending and the memory manager."""
    stop = tmp_path / "stop"
    with lessor.Runtime() as runtime:
        runtime.add_breaker(lessor.BreakerSpec("api"))
        slots = runtime.add_pool(lessor.PoolSpec("slots", lessor.TokenFactory(), max_size=4))
        rows = runtime.add_batcher(lessor.BatchSpec("rows", keep, max_wait=600))
        runtime.add_memory()
        group = runtime.spawn_workers(hold, 2, args=(str(stop),))
        assert len(holding(runtime, 2)) == 2
        for i in range(12):
            rows.submit(i)
        with slots.lease(timeout=5):
            snapshot = runtime.status().as_dict()
        stop.touch()
        assert runtime.join(group, 20)
    yield snapshot


def test_a_real_runtime_is_drawn_with_every_part(status: dict[str, Any]) -> None:
    text = _text(status)
    workers = status["workers"]
    assert len(workers) == 2 and all(w["running"] for w in workers)
    assert f"pid {status['pid']}" in text.splitlines()[0]

    # The tree: every node by its path, kind and state; the workers with pid and leases.
    assert "root supervisor one_for_one" in text
    for node in walk(status["tree"]):
        assert node["path"] in text, node
    for kind in ("pool", "breaker", "batcher", "memory", "workers"):
        assert re.search(rf"root/\S+ {kind} running restarts 0 up \d", text), kind
    for worker in workers:
        line = f"{worker['id']} process running restarts 0 up"
        assert re.search(rf"{re.escape(line)} \S+ pid {worker['pid']} leases slots=1", text)

    # Pools: size/max, leased, and the leases per holder, shortened.
    slots = status["pools"]["slots"]["stats"]
    assert slots["leased"] == 3
    assert _row(text, "slots", "runtime", "3/4", "3", "0", "0")
    holders = "runtime=1 workers-1.0.1=1 workers-1.1.1=1"
    assert re.search(rf"│ {re.escape(holders)}\s*│", text)

    assert _row(text, "api", "closed", "-", "0", "0", "0")  # breaker: state, rate, ...
    assert _row(text, "rows", "12", "0", "0", "0", "0", "-")  # batcher: pending 12

    # Memory: each process's rss (MB), by its slot; the machine on its own line.
    processes = status["memory"]["processes"]
    assert {p["pid"] for p in processes} == {status["pid"], *(w["pid"] for w in workers)}
    for proc in processes:
        name = proc["key"].rpartition("/")[2]
        assert _row(text, name, str(proc["pid"]), f"{proc['rss'] / 2**20:.1f}", "-", "-", "ok")
    assert re.search(r"^machine: used [\d.]+ of [\d.]+ GB, .* level ok$", text, re.M)
    assert re.search(r"^events: restarts 0, failures 0, reclaimed 0, breaker trips 0", text, re.M)

    line = plain_line(status)
    assert line == ("lessor: workers 2/2 up, restarts 0, pools slots 3/4 leased, "
                    "breaker api closed, batch rows pending 12, reclaimed 0")  # fmt: skip


def test_a_frame_depends_on_the_snapshot_alone(status: dict[str, Any]) -> None:
    """Same dict, same frame; and the same after a trip through JSON (as over the socket
    and from ``lessor status --json``). A progress renderable goes on top."""
    text = _text(status)
    assert _text(json.loads(json.dumps(status))) == text
    framed = _text(status, title="lessor top", progress=Text("items 10/20"))
    assert framed.splitlines()[0] == "items 10/20"
    assert framed.splitlines()[1].startswith("lessor top  pid ")


def test_missing_parts_are_left_out() -> None:
    """No memory manager, no workers, no pools, parts that did not answer: the frame
    draws what there is and names what is missing."""
    status = {
        "pid": 7, "version": "0.1.0", "uptime_s": 3725.0,
        "tree": {"id": "root", "path": "root", "kind": "supervisor", "children": [
            {"id": "pg", "path": "root/pg", "kind": "pool", "state": "restarting",
             "restarts": 2, "uptime_s": 123.0, "children": []},
        ]},
        "pools": {}, "batchers": {}, "memory": None, "workers": [],
        "breakers": {"db": {"state": "open", "failure_rate": 0.5, "trips": 2, "rejected": 7,
                            "calls": 10}},
        "events": {"restarted": 2, "failed": 2},
        "unavailable": ["pool:pg", "memory"],
    }  # fmt: skip
    text = _text(status)
    assert "unavailable: pool:pg, memory" in text.splitlines()[0]
    assert "up 1h02m" in text.splitlines()[0]
    assert "root supervisor up 1h02m" in text
    assert "root/pg pool restarting restarts 2 up 2m03s" in text
    assert _row(text, "db", "open", "50%", "10", "2", "7")
    for absent in ("size/max", "rss MB", "machine:", "batches by flush", " process "):
        assert absent not in text
    assert "events: restarts 2, failures 2, reclaimed 0, breaker trips 2" in text
    assert plain_line(status) == (
        "lessor: restarts 2, breaker db open, reclaimed 0, unavailable pool:pg memory"
    )

    # Nothing at all: still a frame and a line.
    assert "tree: unavailable" in _text({})
    assert plain_line({}) == "lessor: restarts 0, reclaimed 0"


def test_process_pools_memory_actions_and_many_holders() -> None:
    """A process-scoped pool is bounded by ``max_total`` and its holders are the
    processes; paused and recycling processes say so; many holders are summed."""
    many = {f"worker:root/w-{i}.{i}.1:{100 + i}": 1 for i in range(10)}
    many["thread:1:2:3"] = 2
    many["actor:urn:x"] = 1
    status = {
        "pid": 1, "tree": {"id": "root", "path": "root", "kind": "supervisor"},
        "pools": {
            "pg": {"scope": "process", "max_size": 2, "max_total": 3,
                   "stats": {"size": 3, "leased": 2, "idle": 1, "waiting": 4,
                             "wait_ms_p50": 1.25, "wait_ms_p99": 80.0, "reclaimed": 1},
                   "per_process": {"root/workers-1.0.1": {"leased": 1},
                                   "root/workers-1.1.1": {"leased": 0},
                                   "runtime": {"leased": 1}}},
            "http": {"scope": "runtime", "max_size": 20, "max_total": None,
                     "stats": {"size": 13, "leased": 13, "idle": 0, "waiting": 0,
                               "holders": many, "reclaimed": 2}},
        },
        "memory": {"machine": {"level": "warn", "total": 8 << 30, "used": 6 << 30,
                               "available": 2 << 30, "limit": 8 << 30},
                   "processes": [
                       {"key": "root/workers-1.0.1", "pid": 11, "rss": 300 << 20,
                        "limit": 400 << 20, "fraction": 0.75, "level": "pause",
                        "paused": True, "recycling": ""},
                       {"key": "root/workers-1.1.1", "pid": 12, "rss": 450 << 20,
                        "limit": 400 << 20, "fraction": 1.125, "level": "restart",
                        "paused": False, "recycling": "over its limit"}]},
        "events": {"memory_pause": 1, "memory_recycle": 1, "recycled": 1},
    }  # fmt: skip
    text = _text(status, width=200)
    assert _row(text, "pg", "process", "3/3", "2", "1", "4", "1.2/80.0",
                "runtime=1 workers-1.0.1=1")  # fmt: skip
    assert "workers-1.1.1=" not in text
    # Threads and actors are the runtime's (2 + 1); 8 holders shown, most first.
    assert re.search(r"│ runtime=3 w-0\.0\.1=1 w-1\.1\.1=1 .* w-6\.6\.1=1 \+3 holders", text)
    assert "+3 holders (3 leases)" in text
    assert _row(text, "workers-1.0.1", "11", "300.0", "400.0", "75%", "pause", "paused")
    assert _row(text, "workers-1.1.1", "12", "450.0", "400.0", "112%", "restart",
                "recycling (over its limit)")  # fmt: skip
    assert "machine: used 6.0 of 8.0 GB, available 2.0 GB, limit 8.0 GB, level warn" in text
    assert "memory actions 2 (pause 1, recycle 1), recycled 1" in text
    assert "reclaimed 3" in text
    assert plain_line(status) == (
        "lessor: restarts 0, pools pg 2/3, http 13/20 leased, memory warn, "
        "2 processes over ok, 1 paused, reclaimed 3"
    )


def test_holders_are_shortened_to_who_holds() -> None:
    assert short_holder("worker:root/workers-1.0.1:4242") == "workers-1.0.1"
    assert short_holder("thread:1:2:3") == "runtime"
    assert short_holder("actor:urn:uuid:1") == "runtime"
    assert short_holder("cache:pg/1") == "cache"
    assert short_holder("anonymous") == "runtime"
