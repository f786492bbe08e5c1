"""Whoever holds an actor's turn drains its mailbox: no thread hand-off, order kept.

These drive a bare LessorActor, so they check the mechanism itself: a request runs
on its caller's thread when the actor is idle; while another thread holds the turn
it waits in the mailbox, the caller is not blocked, and that thread handles it, in
order; a drainer hands the rest to pykka's thread after its share.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lessor import ActorStopped, GetStats
from lessor.actors import base
from lessor.actors.base import COMBINE_LIMIT, Call, LessorActor
from lessor.actors.reply import OneShot

BLOCK = "blocker"
INTERRUPT = "interrupted"


class Probe(LessorActor):
    """Records which thread handled each request; ``BLOCK`` holds the turn until let go."""

    def __init__(self) -> None:
        super().__init__()
        self.handled: list[tuple[str, str]] = []  # (holder, thread name)
        self.entered = threading.Event()
        self.let_go = threading.Event()

    def on_start(self) -> None:
        self.in_turn(self._open)

    def _open(self) -> None:
        self.ready = True

    def on_stop(self) -> None:
        self.in_turn(self.close_mailbox, ActorStopped("probe stopped"))

    def handle_call(self, call: Call) -> Any:
        if call.holder == INTERRUPT:
            raise KeyboardInterrupt  # as a Ctrl-C landing in the middle of the turn
        if call.holder == BLOCK:
            self.entered.set()
            assert self.let_go.wait(10)
        self.handled.append((call.holder, threading.current_thread().name))
        return len(self.handled)


@pytest.fixture
def probe() -> Iterator[Probe]:
    ref = Probe.start()
    actor = base.actor_of(ref)
    assert isinstance(actor, Probe)
    yield actor
    actor.let_go.set()
    ref.stop(block=True, timeout=5)


def test_an_idle_actor_runs_the_request_on_the_callers_thread(probe: Probe) -> None:
    reply = OneShot()
    probe.deliver(GetStats(), reply, "me")
    assert reply.get(0) == 1  # answered before this thread waited at all
    assert probe.handled == [("me", threading.current_thread().name)]


def test_a_busy_actor_queues_requests_and_the_turn_holder_handles_them_in_order(
    probe: Probe,
) -> None:
    holder = threading.Thread(target=probe.deliver, args=(GetStats(), None, BLOCK), name="A")
    holder.start()
    assert probe.entered.wait(5)
    replies = [OneShot() for _ in range(5)]
    for i, reply in enumerate(replies):
        probe.deliver(GetStats(), reply, f"r{i}")  # returns at once: the turn is taken
    assert [h for h, _ in probe.handled] == []
    probe.let_go.set()
    assert [reply.get(5) for reply in replies] == [2, 3, 4, 5, 6]
    holder.join(5)
    assert probe.handled == [(BLOCK, "A"), *((f"r{i}", "A") for i in range(5))]


def test_a_drainer_leaves_the_rest_to_the_actors_own_thread_after_its_share(
    probe: Probe,
) -> None:
    holder = threading.Thread(target=probe.deliver, args=(GetStats(), None, BLOCK), name="A")
    holder.start()
    assert probe.entered.wait(5)
    replies = [OneShot() for _ in range(COMBINE_LIMIT + 10)]
    for i, reply in enumerate(replies):
        probe.deliver(GetStats(), reply, f"r{i}")
    probe.let_go.set()
    assert [reply.get(5) for reply in replies] == list(range(2, COMBINE_LIMIT + 12))
    holder.join(5)
    threads = [name for _, name in probe.handled]
    assert threads[:COMBINE_LIMIT] == ["A"] * COMBINE_LIMIT  # the blocker, then its share
    assert "A" not in threads[COMBINE_LIMIT + 1 :], "the caller kept working for others"


def test_a_stopped_actor_answers_late_requests_with_an_error(probe: Probe) -> None:
    probe.actor_ref.stop(block=True, timeout=5)
    reply = OneShot()
    probe.deliver(GetStats(), reply, "late")
    with pytest.raises(ActorStopped):
        reply.get(1)


def test_an_interrupt_inside_a_turn_reaches_the_caller_and_fails_the_actor(probe: Probe) -> None:
    """Its books may be half changed: the actor fails (a supervisor would restart it)
    instead of carrying on, and the KeyboardInterrupt is the caller's, not pykka's."""
    with pytest.raises(KeyboardInterrupt):
        probe.deliver(GetStats(), OneShot(), INTERRUPT)
    assert not probe.accepting
    assert probe.actor_stopped.wait(5), "the actor did not fail"
