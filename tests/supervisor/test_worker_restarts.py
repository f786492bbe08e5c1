"""Worker processes restart as actors do: restart types, intensity window and backoff.

Delays are read from the event log: a worker's ``failed`` event and the ``started``
event of its next incarnation. The timer never fires early, so each delay is at
least the backoff's base; the upper bounds allow for a busy machine (SLACK).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from lessor import Backoff, Runtime, WorkersFailed
from lessor.supervisor.child import ChildRef
from lessor.supervisor.events import Event
from lessor.supervisor.supervisor import DelayedRestarts, RestartsDue
from lessor.supervisor.workers import WorkerInfo, WorkerPids, WorkerSpec, WorkerStatus
from tests.support.helpers import wait_until
from tests.workers import targets

#: Scheduling and process start-up on a loaded 2-core machine: added to upper bounds only.
SLACK = 1.0


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


def worker_events(runtime: Runtime, group: ChildRef) -> list[Event]:
    """The events of the group's processes (``root/name.slot.incarnation``), in order."""
    return [e for e in runtime.events() if e.node.startswith(f"{group.path}.")]


def restart_delays(group: ChildRef, events: list[Event]) -> list[float]:
    """Seconds from each exit of slot 0 to the start of its next incarnation."""
    exits = {e.node: e.at for e in events if e.kind in ("failed", "exited")}
    starts = {e.node: e.at for e in events if e.kind == "started"}
    slot = f"{group.path}.0"
    return [starts[f"{slot}.{i + 1}"] - exits[f"{slot}.{i}"] for i in range(1, len(starts))]


def test_a_worker_failing_on_start_restarts_later_each_time_then_its_group_gives_up(
    runtime: Runtime,
) -> None:
    backoff = Backoff(min=0.1, max=0.8, jitter=0.2)
    group = runtime.spawn_workers(
        targets.fail, 1, args=(3,), max_restarts=4, max_seconds=60, backoff=backoff
    )
    with pytest.raises(WorkersFailed, match=r"5 restarts within 60s \(max_restarts=4\)"):
        runtime.join(group, timeout=60)
    events = worker_events(runtime, group)
    assert [e.kind for e in events].count("started") == 5  # the first run and 4 restarts
    assert [e.kind for e in events].count("failed") == 5
    assert [e.detail for e in runtime.events() if e.kind == "gave_up"] == [
        "5 restarts within 60s (max_restarts=4)"
    ]
    delays = restart_delays(group, events)
    print("restart delays (s):", " ".join(f"{d:.3f}" for d in delays))
    bases = [min(backoff.max, backoff.min * 2**n) for n in range(4)]  # 0.1 0.2 0.4 0.8
    assert len(delays) == len(bases), delays
    for delay, base in zip(delays, bases, strict=True):
        assert base <= delay <= base * (1 + backoff.jitter) + SLACK, (delays, bases)
    for earlier, later in itertools.pairwise(delays):
        # Each delay at least the one before, but for the jitter once the cap is reached.
        assert later >= earlier / (1 + backoff.jitter) - SLACK / 4, delays


@pytest.mark.parametrize(
    ("restart", "code", "restarted"),
    [
        ("permanent", 0, True),
        ("permanent", 3, True),
        ("transient", 0, False),
        ("transient", 3, True),
        ("temporary", 0, False),
        ("temporary", 3, False),
    ],
)
def test_restart_types_decide_which_exits_are_restarted(
    runtime: Runtime, restart: str, code: int, restarted: bool
) -> None:
    group = runtime.spawn_workers(
        targets.fail, 1, args=(code,), restart=restart,  # type: ignore[arg-type]
        max_restarts=1, backoff=Backoff(min=0.05, max=0.05, jitter=0.0),
    )  # fmt: skip
    ended = "failed" if code else "exited"
    if restarted:  # once, then the second exit is past the intensity
        with pytest.raises(WorkersFailed, match=f"last exit code {code}"):
            runtime.join(group, timeout=60)
        kinds = ["started", ended, "started", "restarted", ended]
    else:
        assert runtime.join(group, timeout=60) is True
        kinds = ["started", ended, "removed"]
        assert group.current(5).ask(WorkerPids(), timeout=5) == []
    assert [e.kind for e in worker_events(runtime, group)] == kinds


def test_stopping_a_group_cancels_a_restart_still_waiting_out_its_backoff(
    runtime: Runtime,
) -> None:
    group = runtime.spawn_workers(
        targets.fail, 1, args=(3,), backoff=Backoff(min=60.0, max=60.0, jitter=0.0)
    )
    actor = group.current(5)

    def waiting() -> bool:
        (info,) = actor.ask(WorkerStatus(), timeout=5)
        assert isinstance(info, WorkerInfo)
        return info.restarting and not info.running and info.restarts == 0

    assert wait_until(waiting, timeout=30)
    assert actor.ask(WorkerPids(), timeout=5) == []
    began = time.monotonic()
    assert runtime.stop_workers(group, timeout=5) == []
    assert time.monotonic() - began < 5  # nothing to wait for: no process is running
    assert [e.kind for e in worker_events(runtime, group)] == ["started", "failed"]
    # The group's backoff timer thread is gone too (the no_leaks fixture checks it).


def test_worker_spec_names_a_bad_backoff() -> None:
    with pytest.raises(ValueError, match="backoff must be a Backoff or None"):
        WorkerSpec("w", targets.fail, backoff=0.5)  # type: ignore[arg-type]


class _Inbox:
    """Stands in for an actor ref: records what the timer tells it."""

    def __init__(self) -> None:
        self.told = threading.Event()

    def tell(self, message: object) -> None:
        assert isinstance(message, RestartsDue)
        self.told.set()


def test_delayed_restarts_wake_the_actor_for_what_is_due_only() -> None:
    inbox = _Inbox()
    delayed = DelayedRestarts[str](inbox, "test-delayed")  # type: ignore[arg-type]
    try:
        now = time.monotonic()
        delayed.add(now + 3600, "later")
        delayed.add(now + 0.01, "soon")
        assert inbox.told.wait(10)
        assert delayed.due(time.monotonic()) == ["soon"]
        assert delayed.due(time.monotonic()) == []
        inbox.told.clear()
    finally:
        delayed.close()
    delayed.add(time.monotonic(), "after close")  # dropped: no thread starts again
    assert delayed.due(time.monotonic() + 7200) == []
    assert not inbox.told.is_set()
