"""Cluster-wide pools on two raylets: the limit holds, and a dead holder, agent or global
pool gives back what it held without anything being granted twice."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from typing import Any

import pytest

import lessor.ray
from lessor import PoolSpec
from tests.on_ray import tasks
from tests.on_ray.conftest import POOLS, RayCluster, on, ray
from tests.support.helpers import wait_until


@pytest.fixture
def flags() -> Any:
    actor = ray.remote(tasks.Flags).options(num_cpus=0).remote()
    yield actor
    ray.kill(actor)


def peak(holds: list[dict[str, Any]], where: str | None = None) -> int:
    """Most holds that overlapped at one instant (on node ``where``, or anywhere)."""
    edges = sorted(
        (t, step)
        for h in holds
        if where is None or h["node"] == where
        for t, step in ((h["start"], 1), (h["end"], -1))
    )
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def run_holds(c: RayCluster, pool: str, n: int, low: float, high: float) -> list[dict[str, Any]]:
    refs = [on((c.head, c.other)[i % 2], tasks.hold).remote(pool, low, high, i) for i in range(n)]
    return list(ray.get(refs, timeout=120))


def test_under_load_from_both_nodes_the_cluster_never_holds_more_than_max_total(
    on_ray: RayCluster,
) -> None:
    size, total = POOLS["slots"]
    holds = run_holds(on_ray, "slots", 32, 0.05, 0.25)
    assert {h["node"] for h in holds} == {on_ray.head, on_ray.other}
    assert peak(holds) <= total
    assert all(peak(holds, n) <= size for n in (on_ray.head, on_ray.other))
    assert peak(holds) == total  # the limit was reached: both nodes held at once
    stats = on_ray.stats("slots")
    assert stats.leased <= total and stats.timeouts == 0


def test_the_overlap_check_catches_a_limit_that_is_not_kept(on_ray: RayCluster) -> None:
    """The checker's mutant: a pool allowed 8 at once is seen to go past "slots"' 3."""
    holds = run_holds(on_ray, "loose", 8, 0.3, 0.4)
    assert peak(holds) > POOLS["slots"][1]


def test_from_a_ray_task_the_api_is_a_workers(on_ray: RayCluster) -> None:
    out = ray.get(on(on_ray.other, tasks.behaviour).remote("one"), timeout=60)
    assert out == {
        "lease": "int",
        "double_release": "DoubleRelease",
        "unknown_pool": "NoSuchPool",
        "exhausted": "PoolExhausted",
        "same_client": "True",
    }


def test_a_killed_holder_task_is_reclaimed_and_ray_s_retry_acquires_anew(
    on_ray: RayCluster, flags: Any
) -> None:
    holder = on(on_ray.head, tasks.hold_until, max_retries=1).remote("one", flags, "h")
    first = ray.get(flags.wait.remote("h.held"), timeout=60)
    waiter = on(on_ray.other, tasks.wait_grant).remote("one", 30.0)
    time.sleep(0.2)  # (not synchronisation: gives the waiter time to queue; it may not)
    os.kill(first["pid"], signal.SIGKILL)
    granted = ray.get(waiter, timeout=60)
    assert "granted" in granted, granted
    # Ray reruns the task: a new process, a new holder, which gets the token after the waiter
    rerun = ray.get(flags.wait.remote("h.held", 2), timeout=60)
    assert rerun["pid"] != first["pid"]
    ray.get(flags.set.remote("h.go"))
    assert ray.get(holder, timeout=60)["pid"] == rerun["pid"]
    stats = ray.get(on_ray.lessor.agent(on_ray.head).stats.remote("one"), timeout=30)
    assert stats.reclaimed >= 1


def test_a_killed_agent_gives_its_tokens_back_is_restarted_and_its_tasks_reconnect(
    on_ray: RayCluster, flags: Any
) -> None:
    holders = [on(on_ray.head, tasks.hold_until, max_retries=0).remote("two", flags, f"a{i}")
               for i in range(2)]  # fmt: skip
    for i in range(2):
        ray.get(flags.wait.remote(f"a{i}.held"), timeout=60)
    assert on_ray.stats("two").leased == 2
    waiter = on(on_ray.other, tasks.wait_grant).remote("two", 60.0)
    old = on_ray.agent_pid(on_ray.head)
    os.kill(old, signal.SIGKILL)
    granted = ray.get(waiter, timeout=90)
    assert "granted" in granted, granted  # the dead agent's tokens came back
    assert wait_until(lambda: on_ray.agent_pid(on_ray.head) != old, timeout=60)
    for ref in holders:  # they held leases the dead agent's tokens stood for: they exit
        with pytest.raises(ray.exceptions.RayError) as failed:
            ray.get(ref, timeout=60)
        assert not isinstance(failed.value, ray.exceptions.GetTimeoutError), failed.value
    again = ray.get(on(on_ray.head, tasks.wait_grant).remote("two", 30.0), timeout=90)
    assert "granted" in again, again  # a task on the restarted agent's node
    reasons = on_ray.info("two")["gone"]
    assert any(why in ("agent died", "agent restarted", "agent replaced")
               for _, why in reasons), reasons  # fmt: skip


def test_a_restarted_global_pool_adopts_what_agents_hold_and_grants_nothing_twice(
    on_ray: RayCluster, flags: Any
) -> None:
    _, total = POOLS["epoch"]
    holders = [on(on_ray.head, tasks.hold_until).remote("epoch", flags, f"e{i}")
               for i in range(total)]  # fmt: skip
    held = [ray.get(flags.wait.remote(f"e{i}.held"), timeout=60)["lease"] for i in range(total)]
    before = on_ray.info("epoch")
    os.kill(before["pid"], signal.SIGKILL)
    assert wait_until(lambda: _incarnation(on_ray, "epoch") not in ("", before["incarnation"]),
                      timeout=60)  # fmt: skip
    after = on_ray.info("epoch")
    assert len(after["recovered"]) == total  # the agent's tokens, adopted
    assert on_ray.stats("epoch").leased + on_ray.stats("epoch").idle <= total
    refused = ray.get(on(on_ray.other, tasks.wait_grant).remote("epoch", 2.0), timeout=60)
    assert refused.get("error") == "AcquireTimeout", refused  # nothing granted twice
    ray.get(flags.set.remote("e0.go"))
    ray.get(holders[0], timeout=60)
    granted = ray.get(on(on_ray.other, tasks.wait_grant).remote("epoch", 30.0), timeout=60)
    assert "granted" in granted, granted
    assert on_ray.stats("epoch").leased <= total
    assert len(set(held)) == total
    for i in range(1, total):
        ray.get(flags.set.remote(f"e{i}.go"))
    ray.get(holders[1:], timeout=60)


def _incarnation(c: RayCluster, pool: str) -> str:
    try:
        return str(c.info(pool)["incarnation"])
    except ray.exceptions.RayError:
        return ""


def test_start_again_with_the_same_pools_returns_what_runs_and_with_others_refuses(
    on_ray: RayCluster,
) -> None:
    from lessor.errors import LessorError, NotPortable
    from lessor.factory import CallableFactory
    from tests.on_ray.conftest import API, specs

    assert lessor.ray.start(specs(), [API]).pools == list(POOLS)
    changed = [replace(spec, acquire_timeout=1) for spec in specs()]
    with pytest.raises(LessorError, match="already runs"):
        lessor.ray.start(changed, [API])
    with pytest.raises(NotPortable):
        lessor.ray.start([PoolSpec("conn", CallableFactory(object), max_size=1)])
    with pytest.raises(LessorError, match="breaker"):
        lessor.ray.start([replace(specs()[0], breaker="api")])
    assert lessor.ray.find() is not None and on_ray.stats("slots").leased <= POOLS["slots"][1]


def test_a_breaker_shared_by_both_nodes_trips_and_recovers_everywhere(on_ray: RayCluster) -> None:
    from tests.on_ray.conftest import API

    a, b = on_ray.head, on_ray.other
    assert ray.get(on(b, tasks.breaker_sees).remote("api", "closed", 30), timeout=60)["state"] == (
        "closed"
    )
    failed = ray.get(on(a, tasks.breaker_calls).remote("api", API.minimum_calls, True), timeout=60)
    assert failed == ["failed"] * API.minimum_calls
    seen = ray.get(on(b, tasks.breaker_sees).remote("api", "open", 30), timeout=60)
    assert seen["state"] == "open"  # tripped on node A, open on node B
    refused = ray.get(on(b, tasks.breaker_calls).remote("api", 1, False), timeout=60)
    assert refused == ["BreakerOpen"]
    # after open_duration: half-open; node B's one probe succeeds and closes it for all
    half = ray.get(on(b, tasks.breaker_sees).remote("api", "half_open", 30), timeout=60)
    assert half["state"] == "half_open"
    assert ray.get(on(b, tasks.breaker_calls).remote("api", 1, False), timeout=60) == ["ok"]
    closed = ray.get(on(a, tasks.breaker_sees).remote("api", "closed", 30), timeout=60)
    assert closed["state"] == "closed"


def test_a_restarted_global_pool_adopts_each_reported_token_as_an_orphan_of_its_epoch() -> None:
    from lessor.holder import Holder
    from lessor.ray.global_pool import adopted

    a, b = Holder("worker", "ray-node-a:1"), Holder("worker", "ray-node-b:2")
    lineage = adopted(
        "epoch", [(a, ["epoch/e1/1", "epoch/e2/4"]), (b, ["epoch/e1/2"]), (b, [])], 5.0
    )
    assert [(o.id, o.holder) for o in lineage.orphans] == [
        ("epoch/e1/1", str(a)), ("epoch/e2/4", str(a)), ("epoch/e1/2", str(b)),
    ]  # fmt: skip
    assert lineage.epochs == ["e1", "e2"]
    assert all(o.pool == "epoch" and o.expires_at is None for o in lineage.orphans)
