"""Supervision with real pykka actors: strategies, restart types, intensity, escalation."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pykka
import pytest

from lessor import (
    ActorRestarted,
    ActorStopped,
    Backoff,
    ChildSpec,
    Runtime,
    SupervisorGaveUp,
    SupervisorSpec,
)
from tests.support.actors import Journal, Worker
from tests.support.helpers import wait_until


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(max_restarts=10, max_seconds=5, handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


def worker(journal: Journal, name: str, **kw: object) -> ChildSpec:
    return ChildSpec(name, Worker, (journal, name), **kw)  # type: ignore[arg-type]


def group(rt: Runtime, journal: Journal, strategy: str, names: str = "abc") -> None:
    spec = SupervisorSpec(
        "g", tuple(worker(journal, n) for n in names), strategy=strategy,  # type: ignore[arg-type]
        max_restarts=10,
    )  # fmt: skip
    rt.add_child(ChildSpec("g", spec))
    assert wait_until(lambda: journal.of("start") == list(names))


def restarted(rt: Runtime, node: str, times: int = 1) -> bool:
    return wait_until(
        lambda: sum(1 for e in rt.events() if e.kind == "restarted" and e.node == node) >= times
    )


def test_one_for_one_restarts_only_the_failed_child(runtime: Runtime, journal: Journal) -> None:
    group(runtime, journal, "one_for_one")
    journal.refs["b"].tell("crash")
    assert restarted(runtime, "root/g/b")
    assert wait_until(lambda: journal.of("start") == ["a", "b", "c", "b"])
    assert journal.of("stop") == []
    assert journal.refs["b"].ask("ping", timeout=5) == "ping"


def test_one_for_all_stops_the_rest_in_reverse_then_restarts_all_in_order(
    runtime: Runtime, journal: Journal
) -> None:
    group(runtime, journal, "one_for_all")
    journal.refs["b"].tell("crash")
    assert wait_until(lambda: len(journal.of("start")) == 6)
    after = journal.entries[journal.entries.index(("failure", "b")) + 1 :]
    assert after == [("stop", "c"), ("stop", "a"), ("start", "a"), ("start", "b"), ("start", "c")]


def test_rest_for_one_restarts_the_failed_child_and_those_after_it(
    runtime: Runtime, journal: Journal
) -> None:
    group(runtime, journal, "rest_for_one")
    journal.refs["b"].tell("crash")
    assert wait_until(lambda: len(journal.of("start")) == 5)
    after = journal.entries[journal.entries.index(("failure", "b")) + 1 :]
    assert after == [("stop", "c"), ("start", "b"), ("start", "c")]


@pytest.mark.parametrize(
    ("restart", "how", "comes_back"),
    [
        ("permanent", "crash", True),
        ("permanent", "exit", True),
        ("transient", "crash", True),
        ("transient", "exit", False),
        ("temporary", "crash", False),
        ("temporary", "exit", False),
    ],
)
def test_restart_types(
    runtime: Runtime, journal: Journal, restart: str, how: str, comes_back: bool
) -> None:
    child = runtime.add_child(worker(journal, "w", restart=restart))
    assert wait_until(lambda: journal.of("start") == ["w"])
    journal.refs["w"].tell(how)
    kinds = {"crash": "failed", "exit": "exited"}
    assert wait_until(lambda: any(e.kind == kinds[how] for e in runtime.events()))
    if comes_back:
        assert restarted(runtime, "root/w")
        assert child.current(5).ask("ping", timeout=5) == "ping"
        assert child.restarts == 1
    else:
        assert wait_until(lambda: any(e.kind == "removed" for e in runtime.events()))
        with pytest.raises(ActorStopped):
            child.current(1)
        assert [n["id"] for n in runtime.tree()["children"]] == []


def test_a_failing_on_start_is_detected_and_restarted(runtime: Runtime, journal: Journal) -> None:
    journal.fail_starts["w"] = 2
    child = runtime.add_child(worker(journal, "w"))
    assert restarted(runtime, "root/w", times=2)
    assert child.current(5).ask("ping", timeout=5) == "ping"
    assert journal.of("start_failed") == ["w", "w"]
    assert journal.of("start") == ["w"]


def test_pending_asks_on_a_failed_actor_get_actor_restarted(
    runtime: Runtime, journal: Journal
) -> None:
    runtime.add_child(worker(journal, "w"))
    assert wait_until(lambda: journal.of("start") == ["w"])
    ref = journal.refs["w"]
    gate = threading.Event()
    ref.tell(("hold", gate))  # the actor is busy...
    ref.tell("crash")  # ...then fails...
    pending = ref.ask("ping", block=False)  # ...with this ask still queued
    gate.set()
    with pytest.raises(ActorRestarted):
        pending.get(timeout=5)


def test_pending_asks_on_a_temporary_actor_get_actor_stopped(
    runtime: Runtime, journal: Journal
) -> None:
    runtime.add_child(worker(journal, "w", restart="temporary"))
    assert wait_until(lambda: journal.of("start") == ["w"])
    ref = journal.refs["w"]
    gate = threading.Event()
    ref.tell(("hold", gate))
    ref.tell("crash")
    pending = ref.ask("ping", block=False)
    gate.set()
    with pytest.raises(ActorStopped) as info:
        pending.get(timeout=5)
    assert not isinstance(info.value, ActorRestarted)


def test_intensity_exceeded_escalates_through_three_levels(journal: Journal) -> None:
    leaf = SupervisorSpec("leaf", (worker(journal, "w"),), max_restarts=1, max_seconds=60)
    mid = SupervisorSpec("mid", (ChildSpec("leaf", leaf),), max_restarts=0)
    rt = Runtime(max_restarts=0, handle_signals=False)
    try:
        rt.add_child(ChildSpec("mid", mid))
        assert wait_until(lambda: journal.of("start") == ["w"])
        journal.refs["w"].tell("crash")  # restart 1 of 1: allowed
        assert restarted(rt, "root/mid/leaf/w")
        journal.refs["w"].tell("crash")  # restart 2: leaf gives up -> mid -> root
        assert rt.wait_failed(5)
        gave_up = [e.node for e in rt.events() if e.kind == "gave_up"]
        assert gave_up == ["root/mid/leaf", "root/mid", "root"]
        assert isinstance(rt.failure, SupervisorGaveUp)
        with pytest.raises(SupervisorGaveUp):
            rt.tree()
    finally:
        report = rt.shutdown(timeout=5)
    assert report.failure is not None and "root gave up" in report.failure
    assert journal.of("stop") == []  # the worker died by crashing, not by being stopped


def test_children_stop_in_reverse_start_order_at_shutdown(journal: Journal) -> None:
    rt = Runtime(handle_signals=False)
    for name in "abc":
        rt.add_child(worker(journal, name))
    sub = SupervisorSpec("s", (worker(journal, "d"), worker(journal, "e")))
    rt.add_child(ChildSpec("s", sub))
    assert wait_until(lambda: journal.of("start") == list("abcde"))
    report = rt.shutdown(timeout=5)
    assert journal.of("stop") == list("edcba")
    assert report.clean
    assert rt.shutdown() is report  # idempotent


def test_a_child_that_will_not_stop_is_killed_and_reported(journal: Journal) -> None:
    gate = threading.Event()
    rt = Runtime(handle_signals=False)
    rt.add_child(ChildSpec("slow", Worker, (journal, "slow", gate), shutdown=0.1))
    rt.add_child(ChildSpec("brutal", Worker, (journal, "brutal", gate), shutdown="brutal_kill"))
    assert wait_until(lambda: len(journal.of("start")) == 2)
    try:
        report = rt.shutdown(timeout=1)
        assert set(report.killed) == {"root/slow", "root/brutal"}
        assert {e.node for e in rt.events() if e.kind == "killed"} == set(report.killed)
    finally:
        gate.set()  # let the stuck threads finish so nothing is left behind


def test_backoff_delays_restarts(journal: Journal) -> None:
    rt = Runtime(max_restarts=10, backoff=Backoff(min=0.2, max=1.0, jitter=0), handle_signals=False)
    try:
        rt.add_child(worker(journal, "w"))
        assert wait_until(lambda: journal.of("start") == ["w"])
        journal.refs["w"].tell("crash")
        assert restarted(rt, "root/w")
        failed = next(e.at for e in rt.events() if e.kind == "failed")
        back = next(e.at for e in rt.events() if e.kind == "restarted")
        assert back - failed >= 0.2
    finally:
        rt.shutdown(timeout=5)


def test_tree_shows_nodes_with_state_restarts_and_uptime(
    runtime: Runtime, journal: Journal
) -> None:
    group(runtime, journal, "one_for_one", names="ab")
    journal.refs["a"].tell("crash")
    assert restarted(runtime, "root/g/a")
    tree = runtime.tree()
    (g,) = tree["children"]
    assert (g["id"], g["kind"], g["state"]) == ("g", "supervisor", "running")
    a, b = g["children"]
    assert (a["id"], a["kind"], a["actor"], a["restarts"]) == ("a", "actor", "Worker", 1)
    assert (b["id"], b["restarts"], b["state"]) == ("b", 0, "running")
    assert a["uptime_s"] >= 0 and b["uptime_s"] >= a["uptime_s"]


def test_events_are_logged_as_structured_records(
    runtime: Runtime, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="lessor.supervisor")
    runtime.add_child(worker(journal, "w"))
    assert wait_until(lambda: journal.of("start") == ["w"])
    journal.refs["w"].tell("crash")
    assert restarted(runtime, "root/w")
    records = [r.lessor for r in caplog.records if hasattr(r, "lessor")]  # type: ignore[attr-defined]
    kinds = [(r["event"], r["node"]) for r in records]
    assert ("failed", "root/w") in kinds and ("restarted", "root/w") in kinds
    failed = next(r for r in records if r["event"] == "failed")
    assert "RuntimeError: w crashed" in failed["detail"]


def test_duplicate_child_ids_are_refused(runtime: Runtime, journal: Journal) -> None:
    runtime.add_child(worker(journal, "w"))
    with pytest.raises(ValueError, match="already has a child 'w'"):
        runtime.add_child(worker(journal, "w"))


def test_bad_specs_name_the_field() -> None:
    with pytest.raises(ValueError, match="restart"):
        ChildSpec("x", Worker, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shutdown"):
        ChildSpec("x", Worker, shutdown=0)
    with pytest.raises(ValueError, match="start"):
        ChildSpec("x", "Worker")
    with pytest.raises(ValueError, match="strategy"):
        SupervisorSpec("s", strategy="all_for_none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_restarts"):
        SupervisorSpec("s", max_restarts=-1)
    with pytest.raises(ValueError, match="unique"):
        SupervisorSpec("s", (ChildSpec("x", Worker), ChildSpec("x", Worker)))


def test_nothing_lessor_survives_shutdown(journal: Journal) -> None:
    rt = Runtime(handle_signals=False)
    rt.add_child(worker(journal, "w"))
    rt.shutdown(timeout=5)
    assert pykka.ActorRegistry.get_all() == []
    assert not [t for t in threading.enumerate() if t.name.startswith(("lessor", "Supervisor"))]
