"""BreakerCore, the pure circuit-breaker state machine, against a model of its rules.

``Model`` below is written from the rules as Resilience4j states them (and as
BreakerCore's docstrings describe the batching), not from the core's code:

* closed: outcomes reported under the current generation go into a window (the
  last ``window_size`` calls, or the calls of the last 20 steps of
  ``window_size / 20`` seconds). After each batch, once the window holds
  ``min(minimum_calls, window_size)`` calls (count) or ``minimum_calls`` (time), a
  failure or slow-call rate at or above its threshold opens the breaker.
* open: lasts ``open_duration``, doubled for each consecutive open up to
  ``open_duration_max`` when that is set, times ``1 + open_jitter * rng()``. Then
  half-open.
* half-open: at most ``half_open_calls`` permits per period (an IGNORED result or
  a dead holder gives one back); once ``half_open_calls`` results are in, the same
  thresholds decide open or closed; ``max_wait_in_half_open`` reopens.
* forced_open / disabled: only the operator leaves them; closed by the operator
  is a reset (the backoff starts again).
* every state change bumps the generation; batches under a stale generation, or
  outside closed, are counted in the totals and never change the state.

A hypothesis state machine drives a core and the model side by side, and the
mutant tests at the end show that the checker catches broken cores.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable
from dataclasses import asdict
from fractions import Fraction
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lessor.core.breaker import (
    FAILED,
    IGNORED,
    SLOW,
    TIME_BUCKETS,
    BreakerCore,
    BreakerSettings,
    Changed,
    Decision,
    ProbeGranted,
    ProbeRefused,
    _Window,
    outcome_code,
    refusal,
)
from lessor.errors import BreakerOpen

START = 100.0
HOLDERS = ("h1", "h2", "h3")
STEPS = 20  # a time window has this many steps (the model's own constant)


def quarters(seed: int) -> Callable[[], float]:
    """A seeded rng for the jitter that draws 0, 0.25, 0.5 or 0.75 (exact in binary)."""
    rng = random.Random(seed)
    return lambda: rng.randrange(4) / 4


Transition = tuple[str, str, float | None]  # (previous, state, until)


# -- the reference model -------------------------------------------------------------------


class Model:
    """The breaker's rules over plain lists, with exact (Fraction) arithmetic for rates."""

    def __init__(self, s: BreakerSettings, now: float, rng: Callable[[], float]) -> None:
        self.s = s
        self.rng = rng
        self.state = "closed"
        self.generation = 1
        self.until: float | None = None
        self.deadline: float | None = None  # half-open's max wait
        self.changed_at = now
        self.opens_in_row = 0
        self.calls: list[tuple[float, int]] = []  # (when, code) in this closed period
        self.out: dict[int, str] = {}  # permit -> holder
        self.results: list[int] = []  # this half-open period's counted probe results
        self.totals = dict.fromkeys(
            ("calls", "failed", "slow", "rejected", "ignored", "stale", "trips", "probes"), 0
        )

    # -- the window

    def step(self, t: float) -> int:
        return math.floor(Fraction(t) * STEPS / self.s.window_size)

    def window(self, now: float) -> list[int]:
        if self.s.window_type == "count":
            return [c for _, c in self.calls[-self.s.window_size :]]
        return [c for t, c in self.calls if self.step(now) - self.step(t) < STEPS]

    def window_edge(self, now: float) -> float | None:
        """When the oldest call in a time window leaves it (None: count window, or empty)."""
        if self.s.window_type == "count":
            return None
        inside = [t for t, _ in self.calls if self.step(now) - self.step(t) < STEPS]
        if not inside:
            return None
        return float((self.step(min(inside)) + STEPS) * Fraction(self.s.window_size) / STEPS)

    def needed(self) -> int:
        s = self.s
        return min(s.minimum_calls, s.window_size) if s.window_type == "count" else s.minimum_calls

    def over(self, codes: list[int]) -> bool:
        n = len(codes)
        failed = sum(1 for c in codes if c & FAILED)
        slow = sum(1 for c in codes if c & SLOW)
        return n > 0 and (
            Fraction(100 * failed, n) >= Fraction(self.s.failure_rate_threshold)
            or Fraction(100 * slow, n) >= Fraction(self.s.slow_call_rate_threshold)
        )

    def rates(self, now: float) -> tuple[float, float]:
        w = self.window(now)
        if len(w) < self.needed():
            return -1.0, -1.0
        n = len(w)
        return (
            100 * sum(1 for c in w if c & FAILED) / n,
            100 * sum(1 for c in w if c & SLOW) / n,
        )

    # -- transitions

    def move(self, now: float, state: str, until: float | None = None) -> Transition:
        previous = self.state
        self.state, self.until = state, until
        self.generation += 1
        self.changed_at = now
        self.calls, self.out, self.results = [], {}, []
        wait = self.s.max_wait_in_half_open
        self.deadline = now + wait if state == "half_open" and wait is not None else None
        if state == "closed":
            self.opens_in_row = 0
        return previous, state, until

    def open(self, now: float) -> Transition:
        s = self.s
        duration = s.open_duration
        if s.open_duration_max is not None:
            duration = min(s.open_duration * 2**self.opens_in_row, s.open_duration_max)
        duration *= 1 + s.open_jitter * self.rng()
        self.opens_in_row += 1
        self.totals["trips"] += 1
        return self.move(now, "open", now + duration)

    def tick(self, now: float) -> list[Transition]:
        if self.state == "open" and self.until is not None and now >= self.until:
            return [self.move(now, "half_open")]
        if self.state == "half_open" and self.deadline is not None and now >= self.deadline:
            return [self.open(now)]
        return []

    # -- what the core is told

    def record(
        self, now: float, generation: int, codes: list[int], rejected: int
    ) -> list[Transition]:
        counted = [c for c in codes if not c & IGNORED]
        t = self.totals
        t["rejected"] += rejected
        t["ignored"] += len(codes) - len(counted)
        t["calls"] += len(counted)
        t["failed"] += sum(1 for c in counted if c & FAILED)
        t["slow"] += sum(1 for c in counted if c & SLOW)
        if generation != self.generation or self.state != "closed":
            t["stale"] += len(counted)
            return self.tick(now)
        self.calls += [(now, c) for c in counted]
        window = self.window(now)
        if len(window) >= self.needed() and self.over(window):
            return [self.open(now)]
        return self.tick(now)

    def may_probe(self, now: float) -> tuple[list[Transition], bool]:
        changes = self.tick(now)
        ok = self.state == "half_open" and len(self.out) + len(self.results) < (
            self.s.half_open_calls
        )
        if not ok and self.state not in ("closed", "disabled"):
            self.totals["rejected"] += 1  # (closed or disabled: the caller goes ahead)
        return changes, ok

    def granted(self, probe: int, holder: str) -> None:
        self.out[probe] = holder
        self.totals["probes"] += 1

    def probe_done(self, now: float, probe: int, code: int) -> list[Transition]:
        changes = self.tick(now)
        if self.state != "half_open" or probe not in self.out:
            return changes
        del self.out[probe]
        if code & IGNORED:
            self.totals["ignored"] += 1
            return changes
        self.totals["calls"] += 1
        self.totals["failed"] += bool(code & FAILED)
        self.totals["slow"] += bool(code & SLOW)
        self.results.append(code)
        if len(self.results) >= self.s.half_open_calls:
            if self.over(self.results):
                changes.append(self.open(now))
            else:
                changes.append(self.move(now, "closed"))
        return changes

    def tick_due(self) -> float | None:
        """When the next timed change falls due (the model's own next_deadline)."""
        if self.state == "open":
            return self.until
        return self.deadline if self.state == "half_open" else None

    def holder_gone(self, now: float, holder: str) -> list[Transition]:
        self.out = {p: h for p, h in self.out.items() if h != holder}
        return self.tick(now)

    def force(self, now: float, state: str) -> list[Transition]:
        if state == "closed":
            self.opens_in_row = 0
        return [self.move(now, state)]


# -- the state machine ---------------------------------------------------------------------

CODES = st.sampled_from([0, 0, FAILED, FAILED, SLOW, FAILED | SLOW, IGNORED, IGNORED | FAILED])
FORCED = ("forced_open", "disabled")
RESULTS = st.sampled_from([0, FAILED, SLOW, FAILED | SLOW, IGNORED])


def settings_for(window_type: str, data: st.DataObject) -> BreakerSettings:
    def draw(label: str, values: list[Any]) -> Any:
        return data.draw(st.sampled_from(values), label=label)

    if window_type == "count":
        window_size = draw("window_size", [1, 2, 3, 5])
        minimum_calls = draw("minimum_calls", [1, 2, 3, 4, 8])
    else:  # clock steps are multiples of 0.25: these windows step every 0.25 / 0.5 s
        window_size = draw("window_size", [5, 10])
        minimum_calls = draw("minimum_calls", [1, 2, 3, 5])
    open_duration = draw("open_duration", [1.0, 2.0])
    return BreakerSettings(
        window_type=window_type,  # type: ignore[arg-type]
        window_size=window_size,
        minimum_calls=minimum_calls,
        failure_rate_threshold=draw("failure_rate_threshold", [25.0, 50.0, 50.0, 100.0]),
        slow_call_rate_threshold=draw("slow_call_rate_threshold", [50.0, 100.0]),
        open_duration=open_duration,
        open_duration_max=draw("open_duration_max", [None, open_duration, 4.0, 6.0]),
        open_jitter=draw("open_jitter", [0.0, 0.0, 0.5]),
        half_open_calls=draw("half_open_calls", [1, 2, 3]),
        max_wait_in_half_open=draw("max_wait_in_half_open", [None, None, 1.5, 3.0]),
    )


class BreakerMachine(RuleBasedStateMachine):
    """Drives a core and the model side by side; every answer must agree."""

    WINDOW: ClassVar[str] = "count"
    CORE: ClassVar[type[BreakerCore]] = BreakerCore

    def __init__(self) -> None:
        super().__init__()
        self.core: BreakerCore | None = None
        self.model: Model | None = None
        self.now = START
        self.seen = START  # the `now` of the last call into the core
        self.grants: dict[int, tuple[int, str]] = {}  # probe -> (generation, holder)
        # The permit count, kept from the core's answers alone (not from the model):
        # permits taken and not given back, per half-open generation, and which of
        # them are still out (neither reported nor given back).
        self.used: dict[int, set[int]] = {}
        self.live: set[int] = set()
        self.excursions = 2  # times a run may force the breaker open or disabled

    @initialize(data=st.data(), seed=st.integers(0, 2**16))
    def setup(self, data: st.DataObject, seed: int) -> None:
        self.start(settings_for(self.WINDOW, data), seed)

    def start(self, s: BreakerSettings, seed: int = 0) -> None:
        """The core and the model draw the same jitter, each from its own rng."""
        self.core = self.CORE(s, self.now, rng=quarters(seed))
        self.model = Model(s, self.now, quarters(seed))

    @property
    def c(self) -> BreakerCore:
        assert self.core is not None
        return self.core

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    # -- checking one call's answer

    def expect(self, out: list[Decision], changes: list[Transition], before: int) -> None:
        """``out`` holds exactly the model's transitions, numbered from ``before``."""
        assert isinstance(out, list)
        got = [(d.previous, d.state, d.until) for d in out if isinstance(d, Changed)]
        assert got == changes, f"core changed {got}, the model {changes}"
        gens = [d.generation for d in out if isinstance(d, Changed)]
        assert gens == list(range(before + 1, before + 1 + len(gens))), (before, gens)
        assert self.c.generation == before + len(gens), "generation moved without a Changed"

    # -- rules

    @rule(codes=st.lists(CODES, max_size=4), rejected=st.sampled_from([0, 0, 1]))
    def record_current(self, codes: list[int], rejected: int) -> None:
        self.record(self.m.generation, codes, rejected)

    @rule(n=st.integers(1, 5), slow=st.booleans())
    def record_failures(self, n: int, slow: bool) -> None:
        """A bad batch, to trip the breaker often."""
        self.record(self.m.generation, [FAILED | (SLOW if slow else 0)] * n, 0)

    @rule(codes=st.lists(CODES, min_size=1, max_size=4), back=st.integers(1, 3))
    def record_stale(self, codes: list[int], back: int) -> None:
        self.record(self.m.generation - back, codes, 0)

    def record(self, generation: int, codes: list[int], rejected: int) -> None:
        before = self.c.generation
        out = self.c.record(self.now, generation, bytes(codes), rejected)
        self.seen = self.now
        assert all(isinstance(d, Changed) for d in out), out
        self.expect(out, self.m.record(self.now, generation, codes, rejected), before)

    @rule(steps=st.sampled_from([1, 2, 4, 8, 19, 20, 21]))
    def advance(self, steps: int) -> None:
        """The clock moves; the core hears of it at its next call (a late timer).

        It moves in steps of a time window (window_size / 20; 0.25 s for a count
        window), so that it lands on the edges of the window.
        """
        s = self.c.settings
        self.now += steps * (s.window_size / STEPS if s.window_type == "time" else 0.25)

    @precondition(lambda self: self.model is not None and self.m.tick_due() is not None)
    @rule(offset=st.sampled_from([-0.25, 0.0, 0.0, 0.25]))
    def advance_to_deadline(self, offset: float) -> None:
        due = self.m.tick_due()
        assert due is not None
        self.now = max(self.now, due + offset)

    @precondition(lambda self: self.model is not None and self.m.window_edge(self.seen) is not None)
    @rule(early=st.booleans())
    def advance_to_window_edge(self, early: bool) -> None:
        """To when the oldest call leaves a time window (or one step before), and tick."""
        edge = self.m.window_edge(self.seen)
        assert edge is not None
        step = self.c.settings.window_size / STEPS
        self.now = max(self.now, edge - step if early else edge)
        self.tick()

    @rule()
    def tick(self) -> None:
        before = self.c.generation
        out = self.c.tick(self.now)
        self.seen = self.now
        assert all(isinstance(d, Changed) for d in out), out
        self.expect(out, self.m.tick(self.now), before)

    @rule(holders=st.lists(st.sampled_from(HOLDERS), min_size=1, max_size=3))
    def probes(self, holders: list[str]) -> None:
        """Handles ask for probe permits, one after another."""
        for holder in holders:
            self.probe(holder)

    def probe(self, holder: str) -> None:
        before = self.c.generation
        ticket = object()
        out = self.c.probe(self.now, ticket, holder)
        self.seen = self.now
        changes, ok = self.m.may_probe(self.now)
        *moves, answer = out
        self.expect(moves, changes, before)
        assert isinstance(answer, ProbeGranted | ProbeRefused), answer
        assert answer.ticket is ticket
        if ok:
            assert isinstance(answer, ProbeGranted), f"model grants, core says {answer}"
            assert answer.generation == self.c.generation == self.m.generation
            assert answer.probe not in self.grants, f"probe id {answer.probe} handed out twice"
            self.grants[answer.probe] = (answer.generation, holder)
            self.used.setdefault(answer.generation, set()).add(answer.probe)
            self.live.add(answer.probe)
            self.m.granted(answer.probe, holder)
        else:
            assert isinstance(answer, ProbeRefused), f"model refuses, core says {answer}"
            assert answer.state == self.m.state
            assert answer.until == self.m.until

    @precondition(lambda self: self.model is not None and bool(self.m.out))
    @rule(data=st.data(), code=RESULTS)
    def report_probe(self, data: st.DataObject, code: int) -> None:
        probe = data.draw(st.sampled_from(sorted(self.m.out)), label="probe")
        self.report(probe, code)

    @precondition(lambda self: bool(self.grants))
    @rule(data=st.data(), code=RESULTS)
    def report_any_probe(self, data: st.DataObject, code: int) -> None:
        """A result for any probe ever granted: twice, late, or from an old period."""
        probe = data.draw(st.sampled_from([*sorted(self.grants), 10**9]), label="probe")
        self.report(probe, code)

    def report_the_probe(self, code: int) -> None:
        """For scripts: report the one outstanding probe."""
        (probe,) = self.m.out
        self.report(probe, code)

    def report(self, probe: int, code: int) -> None:
        before = self.c.generation
        out = self.c.probe_done(self.now, probe, code)
        self.seen = self.now
        assert all(isinstance(d, Changed) for d in out), out
        self.expect(out, self.m.probe_done(self.now, probe, code), before)
        if probe in self.live:
            self.live.discard(probe)
            generation = self.grants[probe][0]
            if code & IGNORED and generation == before == self.c.generation:
                self.used[generation].discard(probe)  # given back, in the same period

    @precondition(lambda self: self.model is not None and bool(self.m.out))
    @rule(data=st.data())
    def prober_dies(self, data: st.DataObject) -> None:
        """A holder with a probe permit out dies."""
        holding = sorted(set(self.m.out.values()))
        self.holder_gone(data.draw(st.sampled_from(holding), label="holder"))

    @rule(holder=st.sampled_from(HOLDERS))
    def holder_gone(self, holder: str) -> None:
        before = self.c.generation
        out = self.c.holder_gone(self.now, holder)
        self.seen = self.now
        assert all(isinstance(d, Changed) for d in out), out
        self.expect(out, self.m.holder_gone(self.now, holder), before)
        mine = {p for p in self.live if self.grants[p][1] == holder}
        self.live -= mine
        if before == self.c.generation:  # given back, in the same period
            self.used.get(before, set()).difference_update(mine)

    @rule(state=st.sampled_from(["closed", "forced_open", "disabled"]))
    def force(self, state: str) -> None:
        if state != "closed":  # forced states stop the run: keep them short and few
            if not self.excursions:
                state = "closed"
            else:
                self.excursions -= 1
        self.force_to(state)

    @precondition(lambda self: self.model is not None and self.m.state in FORCED)
    @rule()
    def release(self) -> None:
        self.force_to("closed")

    def force_to(self, state: str) -> None:
        before = self.c.generation
        out = self.c.force(self.now, state)  # type: ignore[arg-type]
        self.seen = self.now
        self.expect(out, self.m.force(self.now, state), before)

    # -- invariants

    @invariant()
    def agrees(self) -> None:
        if self.core is not None:
            self.check()

    def check(self) -> None:
        c, m = self.c, self.m
        assert c.state == m.state, f"core is {c.state}, model {m.state}"
        assert c.generation == m.generation, (c.generation, m.generation)
        assert c.until == m.until, (c.until, m.until)
        assert c.changed_at == m.changed_at
        due = c.next_deadline()
        if c.state == "open":
            assert due is not None and due == c.until
        elif c.state == "half_open":
            assert due == m.deadline
            assert (due is None) == (c.settings.max_wait_in_half_open is None)
        else:
            assert due is None, f"{c.state} with a deadline {due}"
        left = c.remaining(self.now)
        assert left == (None if m.until is None else max(0.0, m.until - self.now))
        # window
        w = c.window
        assert 0 <= w.failed <= w.calls and 0 <= w.slow <= w.calls, (w.calls, w.failed, w.slow)
        if c.settings.window_type == "count":
            assert w.calls <= c.settings.window_size
        window = m.window(self.seen)
        assert w.calls == len(window), f"window holds {w.calls}, model {len(window)}"
        assert w.failed == sum(1 for x in window if x & FAILED)
        assert w.slow == sum(1 for x in window if x & SLOW)
        # (at the last call's time: rates() expires the window, which must not hide a core
        # that forgets to expire it itself)
        assert c.rates(self.seen) == pytest.approx(m.rates(self.seen))
        # probes
        assert c.probes_out == len(m.out), f"{c.probes_out} probes out, model {len(m.out)}"
        hoc = c.settings.half_open_calls
        for generation, permits in self.used.items():
            assert len(permits) <= hoc, f"{len(permits)} permits in half-open #{generation}"
        assert len(m.out) + len(m.results) <= hoc
        assert asdict(c.totals) == m.totals


class CountWindow(BreakerMachine):
    WINDOW = "count"


class TimeWindow(BreakerMachine):
    WINDOW = "time"


FAST = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("machine", [CountWindow, TimeWindow], ids=["count", "time"])
def test_breaker_core_state_machine(machine: type[BreakerMachine]) -> None:
    run_state_machine_as_test(machine, settings=FAST)


# -- focused tests -------------------------------------------------------------------------


def make(now: float = 0.0, rng: Callable[[], float] = lambda: 0.0, **kw: Any) -> BreakerCore:
    base: dict[str, Any] = {
        "window_size": 10,
        "minimum_calls": 4,
        "failure_rate_threshold": 50.0,
        "open_duration": 10.0,
        "half_open_calls": 2,
    }
    return BreakerCore(BreakerSettings(**{**base, **kw}), now, rng=rng)


def state_of(core: BreakerCore) -> str:
    return core.state  # (not narrowed by an earlier assert)


def changes(out: list[Decision]) -> list[str]:
    return [d.state for d in out if isinstance(d, Changed)]


def codes(*xs: int) -> bytes:
    return bytes(xs)


def trip(core: BreakerCore, now: float) -> None:
    """Open ``core`` (closed) with failures."""
    n = max(core.settings.minimum_calls, 1)
    assert changes(core.record(now, core.generation, bytes([FAILED]) * n)) == ["open"]


def to_half_open(core: BreakerCore) -> float:
    assert core.state == "open" and core.until is not None
    now = core.until
    assert changes(core.tick(now)) == ["half_open"]
    return now


def grant(core: BreakerCore, now: float, holder: str = "h") -> int:
    out = core.probe(now, "ticket", holder)
    assert isinstance(out[-1], ProbeGranted), out
    return out[-1].probe


def fail_probes(core: BreakerCore, now: float) -> None:
    for _ in range(core.settings.half_open_calls):
        core.probe_done(now, grant(core, now), FAILED)


def test_constants() -> None:
    assert (FAILED, SLOW, IGNORED) == (1, 2, 4)
    assert TIME_BUCKETS == 20
    assert [outcome_code(f, s) for f in (False, True) for s in (False, True)] == [0, 2, 1, 3]


def test_count_window_trips_at_minimum_calls_not_before() -> None:
    core = make()
    assert core.record(0.0, 1, codes(FAILED, FAILED, FAILED)) == []  # 3 < minimum_calls
    assert core.rates(0.0) == (-1.0, -1.0)
    assert core.state == "closed" and core.generation == 1
    out = core.record(0.0, 1, codes(0))  # 4 calls, 75% failed
    assert out == [Changed("open", "closed", 2, 10.0)]
    assert core.totals.trips == 1


@pytest.mark.parametrize(
    ("failed", "tripped"), [(1, False), (2, True), (3, True)], ids=["25%", "50%", "75%"]
)
def test_count_window_trips_exactly_at_the_threshold(failed: int, tripped: bool) -> None:
    core = make(window_size=4, minimum_calls=4)
    out = core.record(0.0, 1, codes(*[FAILED] * failed, *[0] * (4 - failed)))
    assert changes(out) == (["open"] if tripped else [])


def test_count_window_needs_at_most_window_size_calls() -> None:
    """minimum_calls above window_size: a full window is enough."""
    core = make(window_size=3, minimum_calls=100)
    assert core.record(0.0, 1, codes(FAILED, FAILED)) == []
    assert changes(core.record(0.0, 1, codes(FAILED))) == ["open"]


def test_count_window_slides() -> None:
    core = make(window_size=4, minimum_calls=4)
    core.record(0.0, 1, codes(FAILED, 0, 0, 0))  # 25%
    assert core.rates(0.0) == (25.0, 0.0)
    core.record(0.0, 1, codes(0, 0))  # the failure slid out
    assert (core.window.calls, core.window.failed) == (4, 0)
    assert core.record(0.0, 1, codes(FAILED)) == []  # 25% again
    assert changes(core.record(0.0, 1, codes(FAILED))) == ["open"]  # 50%


def test_time_window_forgets_calls_older_than_window_size() -> None:
    # a 10 s window in steps of 0.5 s: calls at t=0 count until t < 10
    core = make(window_type="time", window_size=10, minimum_calls=4)
    core.record(0.0, 1, codes(FAILED, FAILED, FAILED))
    core.tick(9.99)
    assert core.window.calls == 3
    assert core.record(10.0, 1, codes(FAILED)) == []  # the first three are gone
    assert (core.window.calls, core.window.failed) == (1, 1)
    core.tick(19.99)
    assert core.window.calls == 1
    core.tick(20.0)
    assert core.window.calls == 0
    assert core.state == "closed"


def test_time_window_still_counts_calls_inside_it() -> None:
    core = make(window_type="time", window_size=10, minimum_calls=4)
    core.record(0.0, 1, codes(FAILED, FAILED, FAILED))
    assert changes(core.record(9.5, 1, codes(FAILED))) == ["open"]


def test_time_window_needs_minimum_calls_even_above_window_size() -> None:
    core = make(window_type="time", window_size=2, minimum_calls=5)
    assert core.record(0.0, 1, codes(FAILED) * 4) == []
    assert changes(core.record(0.5, 1, codes(FAILED))) == ["open"]


def test_rates_expire_the_time_window() -> None:
    core = make(window_type="time", window_size=10, minimum_calls=2)
    core.record(0.0, 1, codes(SLOW, 0))
    assert core.rates(5.0) == (0.0, 50.0)
    assert core.rates(10.0) == (-1.0, -1.0)  # both calls left the window
    assert core.window.calls == 0


def test_slow_call_rate_trips() -> None:
    core = make(failure_rate_threshold=100.0, slow_call_rate_threshold=50.0)
    assert core.record(0.0, 1, codes(SLOW, 0, FAILED)) == []  # below minimum_calls
    out = core.record(0.0, 1, codes(SLOW | FAILED))  # 2/4 slow, 2/4 failed
    assert changes(out) == ["open"]
    assert core.totals.slow == 2 and core.totals.failed == 2


def test_slow_calls_below_their_threshold_do_not_trip() -> None:
    core = make(failure_rate_threshold=100.0, slow_call_rate_threshold=100.0)
    assert core.record(0.0, 1, codes(SLOW, SLOW, SLOW, 0)) == []
    assert core.rates(0.0) == (0.0, 75.0)
    assert core.state == "closed"


def test_ignored_outcomes_do_not_count() -> None:
    core = make()
    assert core.record(0.0, 1, codes(IGNORED | FAILED) * 10) == []
    assert core.window.calls == 0
    assert core.totals.ignored == 10 and core.totals.calls == 0


def test_backoff_doubles_caps_and_resets_after_closing() -> None:
    core = make(open_duration=1.0, open_duration_max=5.0, minimum_calls=1, half_open_calls=1)
    trip(core, 0.0)
    durations = []
    for _ in range(5):
        start = core.changed_at
        assert core.until is not None
        durations.append(core.until - start)
        now = to_half_open(core)
        fail_probes(core, now)
        assert core.state == "open"
    assert durations == [1.0, 2.0, 4.0, 5.0, 5.0]
    now = to_half_open(core)
    core.probe_done(now, grant(core, now), 0)
    assert core.state == "closed"
    trip(core, now)
    assert core.until == now + 1.0  # the backoff starts again


def test_backoff_survives_a_long_outage() -> None:
    """A dead dependency and no traffic: half-open gives up again and again (3 s a turn).

    1024 opens in a row once overflowed ``2.0 ** consecutive_trips``.
    """
    core = make(
        open_duration=1.0, open_duration_max=2.0, minimum_calls=1, max_wait_in_half_open=1.0
    )
    trip(core, 0.0)
    for _ in range(1100):
        now = to_half_open(core)
        assert changes(core.tick(now + 1.0)) == ["open"]
    assert core.until == core.changed_at + 2.0


def test_without_open_duration_max_every_open_lasts_the_same() -> None:
    core = make(open_duration=3.0, minimum_calls=1, half_open_calls=1)
    trip(core, 0.0)
    for _ in range(3):
        assert core.until == core.changed_at + 3.0
        now = to_half_open(core)
        fail_probes(core, now)


def test_forced_reset_resets_the_backoff() -> None:
    core = make(open_duration=1.0, open_duration_max=100.0, minimum_calls=1, half_open_calls=1)
    trip(core, 0.0)
    fail_probes(core, to_half_open(core))
    assert core.until == 1.0 + 2.0
    core.force(3.0, "closed")
    trip(core, 3.0)
    assert core.until == 4.0


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.999])
def test_jitter_stretches_by_the_rngs_fraction(draw: float) -> None:
    core = make(open_duration=10.0, open_jitter=0.5, minimum_calls=1, rng=lambda: draw)
    trip(core, 0.0)
    assert core.until == pytest.approx(10.0 * (1 + 0.5 * draw))


def test_jitter_applies_after_the_cap() -> None:
    core = make(
        open_duration=4.0,
        open_duration_max=5.0,
        open_jitter=1.0,
        minimum_calls=1,
        half_open_calls=1,
        rng=lambda: 0.5,
    )
    trip(core, 0.0)
    assert core.until == 6.0  # 4 * 1.5
    now = to_half_open(core)
    fail_probes(core, now)
    assert core.until == now + 7.5  # min(8, 5) * 1.5


def test_jitter_uses_a_seeded_rng() -> None:
    a = make(open_jitter=0.2, minimum_calls=1, rng=random.Random(7).random)
    b = make(open_jitter=0.2, minimum_calls=1, rng=random.Random(7).random)
    trip(a, 0.0)
    trip(b, 0.0)
    assert a.until == b.until
    assert a.until is not None and 10.0 <= a.until <= 12.0


def test_stale_generation_batches_never_trip() -> None:
    core = make(minimum_calls=1)
    core.force(0.0, "closed")  # generation 2: a batch still says 1
    assert core.generation == 2
    assert core.record(0.0, 1, codes(FAILED) * 20) == []
    assert core.state == "closed" and core.window.calls == 0
    assert core.totals.stale == 20 and core.totals.calls == 20 and core.totals.failed == 20
    assert core.record(0.0, 3, codes(FAILED)) == []  # not one we handed out either
    assert core.state == "closed"


def test_batches_outside_closed_never_change_the_state() -> None:
    core = make(minimum_calls=1, half_open_calls=1)
    trip(core, 0.0)
    generation = core.generation
    assert core.record(1.0, generation, codes(0) * 5) == []  # open, even its own generation
    assert core.state == "open" and core.totals.stale == 5
    now = to_half_open(core)
    assert core.record(now, core.generation, codes(0) * 5) == []
    assert state_of(core) == "half_open" and core.probes_out == 0


def test_a_stale_batch_still_lets_time_move() -> None:
    core = make(minimum_calls=1)
    trip(core, 0.0)
    assert changes(core.record(10.0, 1, codes(FAILED))) == ["half_open"]


def test_forced_open_refuses_probes_and_never_moves_by_itself() -> None:
    core = make()
    out = core.force(0.0, "forced_open")
    assert out == [Changed("forced_open", "closed", 2, None)]
    assert core.next_deadline() is None and core.remaining(0.0) is None
    assert core.tick(1e9) == []
    (refused,) = core.probe(1e9, "t", "h")  # no Changed before it
    assert refused == ProbeRefused("t", "forced_open", None)
    assert core.record(1e9, core.generation, codes(0) * 100) == []
    assert core.state == "forced_open" and core.generation == 2


def test_forced_open_from_open_stays_forced() -> None:
    core = make(minimum_calls=1)
    trip(core, 0.0)
    core.force(1.0, "forced_open")
    assert core.until is None and core.tick(1e9) == [] and core.state == "forced_open"


def test_disabled_never_trips() -> None:
    core = make(minimum_calls=1)
    core.force(0.0, "disabled")
    for now in range(50):
        assert core.record(float(now), core.generation, codes(FAILED | SLOW) * 10) == []
    assert core.tick(1e9) == []
    assert core.state == "disabled" and core.totals.trips == 0
    assert core.next_deadline() is None
    assert isinstance(core.probe(0.0, "t", "h")[-1], ProbeRefused)


def test_force_closed_is_a_reset() -> None:
    core = make()
    core.record(0.0, 1, codes(FAILED, FAILED, FAILED))
    out = core.force(1.0, "closed")
    assert out == [Changed("closed", "closed", 2, None)]
    assert core.window.calls == 0
    assert core.record(1.0, 2, codes(FAILED)) == []  # judged afresh


@pytest.mark.parametrize("state", ["open", "half_open", "bogus"])
def test_force_refuses_other_states(state: str) -> None:
    core = make()
    with pytest.raises(ValueError, match="forced"):
        core.force(0.0, state)  # type: ignore[arg-type]
    assert core.state == "closed" and core.generation == 1


def test_max_wait_in_half_open_reopens() -> None:
    core = make(minimum_calls=1, max_wait_in_half_open=5.0, open_duration=10.0)
    trip(core, 0.0)
    now = to_half_open(core)
    assert core.next_deadline() == now + 5.0
    grant(core, now)
    assert core.tick(now + 4.99) == []
    out = core.tick(now + 5.0)
    assert out == [Changed("open", "half_open", core.generation, now + 15.0)]
    assert core.probes_out == 0


def test_without_max_wait_half_open_waits_for_ever() -> None:
    core = make(minimum_calls=1)
    trip(core, 0.0)
    now = to_half_open(core)
    assert core.next_deadline() is None
    assert core.tick(now + 1e9) == [] and core.state == "half_open"


def test_half_open_closes_or_reopens_by_the_thresholds() -> None:
    core = make(minimum_calls=1, half_open_calls=4)
    trip(core, 0.0)
    now = to_half_open(core)
    probes = [grant(core, now, f"h{i}") for i in range(4)]
    assert isinstance(core.probe(now, "t", "h5")[-1], ProbeRefused)
    for p, code in zip(probes[:3], (FAILED, 0, 0), strict=True):
        assert core.probe_done(now, p, code) == []
    assert changes(core.probe_done(now, probes[3], 0)) == ["closed"]  # 25% < 50%

    trip(core, now)
    now = to_half_open(core)
    probes = [grant(core, now, f"h{i}") for i in range(4)]
    for p, code in zip(probes, (FAILED, 0, FAILED, 0), strict=True):
        out = core.probe_done(now, p, code)
    assert changes(out) == ["open"]  # 50%


def test_holder_gone_frees_its_permits() -> None:
    core = make(minimum_calls=1, half_open_calls=2)
    trip(core, 0.0)
    now = to_half_open(core)
    first, second = grant(core, now, "a"), grant(core, now, "a")
    refused = core.probe(now, "t", "b")[-1]
    assert refused == ProbeRefused("t", "half_open", None)
    assert core.holder_gone(now, "a") == []
    assert core.probes_out == 0
    mine = grant(core, now, "b")
    assert mine not in (first, second)
    assert core.probe_done(now, first, 0) == []  # the dead holder's late result: unknown
    assert core.probes_out == 1 and core.state == "half_open"


def test_an_ignored_probe_frees_its_permit() -> None:
    core = make(minimum_calls=1, half_open_calls=1)
    trip(core, 0.0)
    now = to_half_open(core)
    probe = grant(core, now)
    assert isinstance(core.probe(now, "t", "other")[-1], ProbeRefused)
    assert core.probe_done(now, probe, IGNORED | FAILED) == []
    assert core.state == "half_open" and core.totals.ignored == 1
    assert core.probe_done(now, probe, FAILED) == []  # already given back
    again = grant(core, now, "other")
    assert changes(core.probe_done(now, again, 0)) == ["closed"]


def test_refused_probes_count_as_rejected_only_where_calls_are_refused() -> None:
    core = make(minimum_calls=1, half_open_calls=1)
    core.probe(0.0, "t", "h")  # closed: the caller goes ahead
    assert core.totals.rejected == 0
    trip(core, 0.0)
    core.probe(1.0, "t", "h")  # open
    assert core.totals.rejected == 1
    now = to_half_open(core)
    grant(core, now)
    core.probe(now, "t", "h")  # half-open, no permit left
    assert core.totals.rejected == 2
    core.force(now, "disabled")
    core.probe(now, "t", "h")
    assert core.totals.rejected == 2
    core.force(now, "forced_open")
    core.probe(now, "t", "h")
    assert (core.totals.rejected, core.totals.probes) == (3, 1)


def test_probes_of_an_earlier_half_open_are_ignored() -> None:
    core = make(minimum_calls=1, half_open_calls=1, max_wait_in_half_open=1.0)
    trip(core, 0.0)
    now = to_half_open(core)
    old = grant(core, now)
    assert changes(core.tick(now + 1.0)) == ["open"]
    now = to_half_open(core)
    assert core.probe_done(now, old, 0) == []
    assert core.state == "half_open"


def test_probe_ticks_first() -> None:
    """A probe asked for after the open state ended gets a permit in the new half-open."""
    core = make(minimum_calls=1)
    trip(core, 0.0)
    out = core.probe(10.0, "t", "h")
    assert changes(out) == ["half_open"]
    assert isinstance(out[-1], ProbeGranted) and out[-1].generation == core.generation


@pytest.mark.parametrize(
    ("state", "until", "text", "remaining"),
    [
        ("open", 12.5, "breaker 'db' is open for 2.5s more", 2.5),
        ("open", 9.0, "breaker 'db' is open for 0s more", 0.0),
        ("half_open", None, "breaker 'db' is half-open, every probe permit taken", None),
        ("forced_open", None, "breaker 'db' is forced open", None),
        ("disabled", None, "breaker 'db' is disabled", None),
    ],
)
def test_refusal(state: str, until: float | None, text: str, remaining: float | None) -> None:
    exc = refusal("db", state, until, 10.0)
    assert isinstance(exc, BreakerOpen)
    assert str(exc) == text
    assert exc.breaker == "db" and exc.remaining == remaining
    back = pickle.loads(pickle.dumps(exc))
    assert (str(back), back.breaker, back.remaining) == (text, "db", remaining)


# -- the checker catches broken cores ------------------------------------------------------


class PermitLeak(BreakerCore):
    """Hands out probe permits without a limit."""

    def probe(self, now: float, ticket: object, holder: str) -> list[Decision]:
        out = self.tick(now)
        if self.state != "half_open":
            return [*out, *super().probe(now, ticket, holder)]
        probe = self._next_probe
        self._next_probe += 1
        self._probes.out[probe] = holder
        self.totals.probes += 1
        return [*out, ProbeGranted(ticket, probe, self.generation)]


class TrustsStaleBatches(BreakerCore):
    """Takes every batch as one of the current generation."""

    def record(
        self, now: float, generation: int, codes: bytes, rejected: int = 0
    ) -> list[Decision]:
        return super().record(now, self.generation, codes, rejected)


class ForgetsDeadHolders(BreakerCore):
    """Keeps a dead holder's permits."""

    def holder_gone(self, now: float, holder: str) -> list[Decision]:
        return self.tick(now)


class StrictThreshold(BreakerCore):
    """Opens only above a threshold, not at it."""

    def _tripped(self, calls: int, failed: int, slow: int, *, closed: bool) -> bool:
        s = self.settings
        if calls < (self._enough() if closed else 1):
            return False
        return (
            failed * 100.0 > s.failure_rate_threshold * calls
            or slow * 100.0 > s.slow_call_rate_threshold * calls
        )


class _WideWindow(_Window):
    def expire(self, now: float) -> None:
        super().expire(now - self.width)  # keeps one step too many


class WideTimeWindow(BreakerCore):
    """A time window one step (window_size / 20) too long."""

    def __init__(self, settings: BreakerSettings, now: float, **kw: Any) -> None:
        super().__init__(settings, now, **kw)
        self.window = _WideWindow(settings)


class KeepsBackoff(BreakerCore):
    """Closing after good probes does not reset the backoff."""

    def _move(self, now: float, state: Any, until: float | None = None) -> Changed:
        trips = self._consecutive_trips
        change = super()._move(now, state, until)
        self._consecutive_trips = trips
        return change


MUTANT_RUN = settings(
    max_examples=1000,  # a run stops at its first failure: each takes well under 100
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)

MUTANTS = [
    (PermitLeak, "count"),
    (PermitLeak, "time"),
    (TrustsStaleBatches, "count"),
    (TrustsStaleBatches, "time"),
    (ForgetsDeadHolders, "count"),
    (ForgetsDeadHolders, "time"),
    (StrictThreshold, "count"),
    (StrictThreshold, "time"),
    (WideTimeWindow, "time"),
]


@pytest.mark.parametrize(
    ("mutant", "window"), MUTANTS, ids=[f"{m.__name__}-{w}" for m, w in MUTANTS]
)
def test_the_state_machine_catches_a_mutant(mutant: type[BreakerCore], window: str) -> None:
    machine = type(
        f"{mutant.__name__}Machine", (BreakerMachine,), {"CORE": mutant, "WINDOW": window}
    )
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(machine, settings=MUTANT_RUN)
    print(mutant.__name__, window, "->", str(caught.value).splitlines()[0])


@pytest.mark.parametrize("machine", [CountWindow, TimeWindow], ids=["count", "time"])
def test_the_state_machine_passes_the_real_core_with_the_mutant_settings(
    machine: type[BreakerMachine],
) -> None:
    """The mutant runs above fail because of the mutants, not the settings."""
    run_state_machine_as_test(machine, settings=settings(MUTANT_RUN, max_examples=60))


def scripted(core: type[BreakerCore]) -> None:
    """Trip, fail the probes (backoff doubles), close, trip again: checked at each step."""
    machine = type("Scripted", (BreakerMachine,), {"CORE": core})()
    machine.start(
        BreakerSettings(
            window_size=1,
            minimum_calls=1,
            open_duration=1.0,
            open_duration_max=8.0,
            half_open_calls=1,
        )
    )
    script: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (machine.record_current, ([FAILED], 0)),
        (machine.advance_to_deadline, (0.0,)),
        (machine.probe, ("h1",)),
        (machine.report_the_probe, (FAILED,)),
        (machine.advance_to_deadline, (0.0,)),
        (machine.probe, ("h1",)),
        (machine.report_the_probe, (0,)),
        (machine.record_current, ([FAILED], 0)),
    ]
    for step, args in script:
        step(*args)
        machine.check()
    assert machine.c.state == "open"


def test_a_scripted_run_passes_the_real_core() -> None:
    scripted(BreakerCore)


def test_a_scripted_run_catches_a_backoff_that_never_resets() -> None:
    with pytest.raises(AssertionError, match="core changed"):
        scripted(KeepsBackoff)
