"""RestartIntensity and RestartPlanner (pure OTP restart logic) against reference models.

Times in the property tests are multiples of 0.25 s, which floats hold exactly, so the
reference window count never disagrees with the module over rounding.

The reference intensity window is closed, like OTP's ``add_restart`` (it keeps
``R >= Now - Period``): a restart at ``t`` still counts at ``now`` while
``now - t <= max_seconds``; see ``test_intensity_window_boundary_is_inclusive``.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lessor.specs import Backoff
from lessor.supervisor.restarts import GiveUp, Remove, Restart, RestartIntensity, RestartPlanner

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
KINDS = ("permanent", "transient", "temporary")

# -- reference models and helpers ------------------------------------------------------------


class IntensityModel:
    """Every restart time ever recorded; the window is counted from scratch each time."""

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.times: list[float] = []

    def add(self, now: float) -> tuple[bool, int]:
        """Record a restart; (allowed, restarts within the window ending at ``now``)."""
        self.times.append(now)
        recent = sum(1 for t in self.times if now - t <= self.max_seconds)
        return recent <= self.max_restarts, recent


def restarted(kind: str, abnormal: bool) -> bool:
    return kind == "permanent" or (kind == "transient" and abnormal)


def delay_bounds(backoff: Backoff, n: int) -> tuple[float, float]:
    base = min(backoff.max, backoff.min * 2.0 ** min(n - 1, 64))
    return base, base * (1 + backoff.jitter)


class FixedRng(random.Random):
    """An rng whose ``random()`` always answers ``u``."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


def planner(
    strategy: str = "one_for_one",
    max_restarts: int = 1000,
    max_seconds: float = 10.0,
    backoff: Backoff | None = None,
    rng: random.Random | None = None,
) -> RestartPlanner:
    return RestartPlanner(
        strategy,  # type: ignore[arg-type]
        RestartIntensity(max_restarts, max_seconds),
        backoff,
        rng,
    )


quarters = st.integers(min_value=0, max_value=40).map(lambda q: q / 4)
periods = st.integers(min_value=1, max_value=40).map(lambda q: q / 4)


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    low = draw(st.floats(min_value=0.001, max_value=5.0))
    high = low * draw(st.floats(min_value=1.0, max_value=100.0))
    jitter = draw(st.sampled_from([0.0, 0.2, 1.0]) | st.floats(min_value=0.0, max_value=2.0))
    return Backoff(low, high, jitter)


# -- examples: strategy x restart type ---------------------------------------------------------

# Five children, all running; child 2 exits and its kind varies. Siblings 1 and 4 are
# temporary, 0 and 3 permanent/transient.
TYPES = ["permanent", "temporary", None, "transient", "temporary"]
RESTARTS = {
    "one_for_one": Restart(stop=(), start=(2,), remove=(), delay=0.0),
    "one_for_all": Restart(stop=(4, 3, 1, 0), start=(0, 2, 3), remove=(1, 4), delay=0.0),
    "rest_for_one": Restart(stop=(4, 3), start=(2, 3), remove=(4,), delay=0.0),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("abnormal", [True, False], ids=["abnormal", "normal"])
def test_strategy_by_restart_type(strategy: str, kind: str, abnormal: bool) -> None:
    types = [kind if t is None else t for t in TYPES]
    plan = planner(strategy).child_exited(1.0, 2, abnormal, types, [True] * 5)
    expected = RESTARTS[strategy] if restarted(kind, abnormal) else Remove(2)
    assert plan == expected


@pytest.mark.parametrize(
    ("strategy", "index", "running", "expected"),
    [
        # Only running siblings are stopped, and only those are started again.
        ("one_for_all", 2, [True, False, True, False, True], Restart((4, 0), (0, 2), (4,), 0.0)),
        (
            "one_for_all",
            0,
            [True, True, True, True, True],
            Restart((4, 3, 2, 1), (0, 3), (1, 2, 4), 0.0),
        ),
        ("rest_for_one", 0, [False, True, False, True, False], Restart((3, 1), (0, 3), (1,), 0.0)),
        ("rest_for_one", 4, [True] * 5, Restart((), (4,), (), 0.0)),
        ("one_for_all", 4, [False] * 5, Restart((), (4,), (), 0.0)),
        ("one_for_one", 3, [True] * 5, Restart((), (3,), (), 0.0)),
    ],
)
def test_siblings(strategy: str, index: int, running: list[bool], expected: Restart) -> None:
    types = ["permanent", "temporary", "temporary", "transient", "temporary"]
    types[index] = "permanent"
    assert planner(strategy).child_exited(0.0, index, True, types, running) == expected


def test_single_child() -> None:
    for strategy in STRATEGIES:
        plan = planner(strategy).child_exited(0.0, 0, True, ["transient"], [True])
        assert plan == Restart((), (0,), (), 0.0)


# -- examples: intensity ----------------------------------------------------------------------


def test_intensity_gives_up_after_max_restarts() -> None:
    p = planner("one_for_one", max_restarts=2, max_seconds=10.0)
    args = (0, True, ["permanent"], [True])
    assert isinstance(p.child_exited(0.0, *args), Restart)
    assert isinstance(p.child_exited(1.0, *args), Restart)
    plan = p.child_exited(2.0, *args)
    assert plan == GiveUp("3 restarts within 10s (max_restarts=2)")


def test_intensity_window_slides() -> None:
    intensity = RestartIntensity(2, 10.0)
    assert [intensity.add(t) for t in (0.0, 1.0, 10.5, 11.5)] == [True, True, True, True]
    assert intensity.recent == 2
    assert intensity.add(12.0) is False
    assert intensity.recent == 3


def test_zero_max_restarts_gives_up_at_once() -> None:
    p = planner("one_for_all", max_restarts=0)
    assert isinstance(p.child_exited(0.0, 0, True, ["permanent", "permanent"], [True] * 2), GiveUp)


def test_remove_does_not_count_as_restart() -> None:
    p = planner("one_for_all", max_restarts=1, max_seconds=100.0)
    types = ["temporary", "transient", "permanent"]
    for t in range(20):
        assert p.child_exited(float(t), 0, True, types, [True] * 3) == Remove(0)
        assert p.child_exited(float(t), 1, False, types, [True] * 3) == Remove(1)
    assert p.intensity.recent == 0
    assert isinstance(p.child_exited(20.0, 2, True, types, [True] * 3), Restart)
    assert isinstance(p.child_exited(21.0, 1, True, types, [True] * 3), GiveUp)


def test_intensity_window_boundary_is_inclusive() -> None:
    intensity = RestartIntensity(1, 5.0)
    assert intensity.add(0.0) is True
    assert intensity.add(5.0) is False  # OTP: [5, 0] has length 2 > 1 -> terminate


# -- examples: backoff ------------------------------------------------------------------------


def test_no_backoff_means_no_delay() -> None:
    p = planner("one_for_one", max_restarts=50)
    delays = [p.child_exited(0.0, 0, True, ["permanent"], [True]).delay for _ in range(50)]
    assert delays == [0.0] * 50


def test_backoff_doubles_caps_and_resets() -> None:
    p = planner(max_restarts=100, max_seconds=10.0, backoff=Backoff(0.5, 3.0, 0.0))

    def delay(now: float) -> float:
        plan = p.child_exited(now, 0, True, ["permanent"], [True])
        assert isinstance(plan, Restart)
        return plan.delay

    assert [delay(float(t)) for t in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    # At 10.0 the window [0, 10] holds all seven restarts (OTP: closed): still capped.
    assert delay(10.0) == 3.0
    assert delay(100.0) == 0.5  # a calm child restarts at once again


def test_backoff_jitter() -> None:
    backoff = Backoff(1.0, 4.0, 0.5)
    p = planner(max_restarts=100, backoff=backoff, rng=FixedRng(0.5))
    delays = [p.child_exited(0.0, 0, True, ["permanent"], [True]).delay for _ in range(4)]
    assert delays == [1.25, 2.5, 5.0, 5.0]
    p = planner(max_restarts=100, backoff=backoff, rng=FixedRng(0.0))
    assert p.child_exited(0.0, 0, True, ["permanent"], [True]).delay == 1.0


def test_backoff_many_restarts_in_window() -> None:
    p = planner(max_restarts=2000, max_seconds=60.0, backoff=Backoff(0.1, 1.0, 0.0))
    for _ in range(1100):
        plan = p.child_exited(0.0, 0, True, ["permanent"], [True])
        assert isinstance(plan, Restart)
        assert plan.delay <= 1.0


# -- properties -------------------------------------------------------------------------------


@given(
    max_restarts=st.integers(min_value=0, max_value=6),
    max_seconds=periods,
    gaps=st.lists(quarters, max_size=60),
)
def test_intensity_matches_reference(
    max_restarts: int, max_seconds: float, gaps: list[float]
) -> None:
    intensity = RestartIntensity(max_restarts, max_seconds)
    model = IntensityModel(max_restarts, max_seconds)
    now = 0.0
    for gap in gaps:
        now += gap
        allowed, recent = model.add(now)
        assert intensity.add(now) is allowed
        assert intensity.recent == recent


@st.composite
def exits(draw: st.DrawFn) -> tuple[str, int, bool, list[str], list[bool]]:
    n = draw(st.integers(min_value=1, max_value=8))
    types = draw(st.lists(st.sampled_from(KINDS), min_size=n, max_size=n))
    running = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    index = draw(st.integers(min_value=0, max_value=n - 1))
    return draw(st.sampled_from(STRATEGIES)), index, draw(st.booleans()), types, running


@given(case=exits(), backoff=st.none() | backoffs(), seed=st.integers(0, 2**32))
def test_plan_shape(
    case: tuple[str, int, bool, list[str], list[bool]], backoff: Backoff | None, seed: int
) -> None:
    strategy, index, abnormal, types, running = case
    n = len(types)
    plan = planner(strategy, backoff=backoff, rng=random.Random(seed)).child_exited(
        3.0, index, abnormal, types, running
    )
    if not restarted(types[index], abnormal):
        assert plan == Remove(index)
        return
    assert isinstance(plan, Restart)
    stop, start, remove = plan.stop, plan.start, plan.remove
    # stop: reverse start order, never the failed child, only running children
    assert all(a > b for a, b in itertools.pairwise(stop))
    assert index not in stop
    assert all(0 <= i < n and running[i] for i in stop)
    # start: unique, in start order, holds the failed child, nothing that was not stopped
    assert all(a < b for a, b in itertools.pairwise(start))
    assert index in start
    assert set(start) <= {*stop, index}
    # remove: exactly the stopped temporaries, and none of them start again
    assert set(remove) <= set(stop)
    assert set(remove) == {i for i in stop if types[i] == "temporary"}
    assert start == tuple(sorted({*stop, index} - set(remove)))
    # which siblings, per strategy
    affected = {
        "one_for_one": set(),
        "one_for_all": set(range(n)),
        "rest_for_one": set(range(index + 1, n)),
    }[strategy]
    assert set(stop) == {i for i in affected if i != index and running[i]}
    if backoff is None:
        assert plan.delay == 0.0
    else:
        low, high = delay_bounds(backoff, 1)
        assert low <= plan.delay <= high


@given(
    max_restarts=st.integers(min_value=0, max_value=12),
    max_seconds=periods,
    backoff=backoffs(),
    seed=st.integers(0, 2**32),
    gaps=st.lists(quarters, min_size=1, max_size=30),
)
def test_backoff_delay(
    max_restarts: int, max_seconds: float, backoff: Backoff, seed: int, gaps: list[float]
) -> None:
    p = planner(
        max_restarts=max_restarts, max_seconds=max_seconds, backoff=backoff, rng=random.Random(seed)
    )
    model = IntensityModel(max_restarts, max_seconds)
    twin = random.Random(seed)  # draws the same u as the planner's rng
    now = 0.0
    for gap in gaps:
        now += gap
        allowed, recent = model.add(now)
        plan = p.child_exited(now, 0, True, ["permanent"], [True])
        if not allowed:
            assert isinstance(plan, GiveUp)
            return
        assert isinstance(plan, Restart)
        low, high = delay_bounds(backoff, recent)
        assert low <= plan.delay <= high
        assert plan.delay <= backoff.max * (1 + backoff.jitter)
        assert plan.delay == pytest.approx(low * (1 + backoff.jitter * twin.random()))


# -- state machine ----------------------------------------------------------------------------


@dataclass
class Child:
    ident: int
    kind: str
    running: bool = True


class SupervisorMachine(RuleBasedStateMachine):
    """Plays the supervisor: carries out each plan on its own book of children.

    When the planner gives up, the parent starts the supervisor afresh (new planner and
    intensity, the original children running again).
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.last_started: list[Child] = []
        self.gave_up = 0
        self.restarts = 0

    @initialize(
        strategy=st.sampled_from(STRATEGIES),
        kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6),
        max_restarts=st.integers(min_value=0, max_value=4),
        max_seconds=periods,
        backoff=st.none() | backoffs(),
        seed=st.integers(0, 2**32),
    )
    def setup(
        self,
        strategy: str,
        kinds: list[str],
        max_restarts: int,
        max_seconds: float,
        backoff: Backoff | None,
        seed: int,
    ) -> None:
        self.strategy = strategy
        self.kinds = kinds
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.backoff = backoff
        self.seed = seed
        self.fresh_supervisor()

    def fresh_supervisor(self) -> None:
        self.last_started = []
        self.children = [Child(i, kind) for i, kind in enumerate(self.kinds)]
        self.planner = planner(
            self.strategy, self.max_restarts, self.max_seconds, self.backoff,
            random.Random(self.seed),
        )  # fmt: skip
        self.model = IntensityModel(self.max_restarts, self.max_seconds)

    def running(self) -> list[Child]:
        return [c for c in self.children if c.running]

    @rule(dt=quarters)
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def advance_one_period(self) -> None:
        """Lands restarts exactly max_seconds apart: the window's edge."""
        self.now += self.max_seconds

    @precondition(lambda self: bool(self.running()))
    @rule(pick=st.integers(min_value=0, max_value=99), abnormal=st.booleans())
    def child_exits(self, pick: int, abnormal: bool) -> None:
        self.last_started = []
        child = self.running()[pick % len(self.running())]
        others_running = {c.ident for c in self.running() if c is not child}
        index = self.children.index(child)
        before = list(self.children)
        child.running = False  # it has exited; the planner must not care
        plan = self.planner.child_exited(
            self.now,
            index,
            abnormal,
            [c.kind for c in before],
            [c.running for c in before],
        )
        if not restarted(child.kind, abnormal):
            assert plan == Remove(index)
            self.children.remove(child)
            return
        allowed, recent = self.model.add(self.now)
        assert isinstance(plan, GiveUp) == (not allowed), (plan, self.model.times)
        if isinstance(plan, GiveUp):
            self.gave_up += 1
            self.fresh_supervisor()
            return
        assert isinstance(plan, Restart)
        self.restarts += 1
        assert list(plan.stop) == sorted(plan.stop, reverse=True)
        for i in plan.stop:
            assert before[i].running, f"stops child {i}, which is not running"
            before[i].running = False
        for i in plan.remove:
            assert before[i].kind == "temporary"
            self.children.remove(before[i])
        started = [before[i] for i in plan.start]
        for c in started:
            assert c in self.children
            assert not c.running, f"starts {c}, which is already running"
            c.running = True
        assert child in started
        self.last_started = started
        # Nothing that was running before stays stopped, unless it was dropped.
        for c in self.children:
            assert c.running or c.ident not in others_running, c
        if self.backoff is None:
            assert plan.delay == 0.0
        else:
            low, high = delay_bounds(self.backoff, recent)
            assert low <= plan.delay <= high

    @precondition(lambda self: bool(self.running()))
    @rule(pick=st.integers(min_value=0, max_value=99))
    def terminate_child(self, pick: int) -> None:
        """The supervisor was asked to stop a child (OTP terminate_child): it stays stopped."""
        self.last_started = []
        running = self.running()
        running[pick % len(running)].running = False

    @precondition(lambda self: any(not c.running for c in self.children))
    @rule(pick=st.integers(min_value=0, max_value=99))
    def restart_child(self, pick: int) -> None:
        """A stopped child is started again by request (OTP restart_child)."""
        stopped = [c for c in self.children if not c.running]
        stopped[pick % len(stopped)].running = True

    @invariant()
    def started_children_are_running(self) -> None:
        # Cleared by every rule that may stop a child, so this is the state right after
        # the last Restart was carried out.
        for c in self.last_started:
            assert c.running and c in self.children

    @invariant()
    def children_keep_start_order(self) -> None:
        idents = [c.ident for c in getattr(self, "children", [])]
        assert idents == sorted(idents)
        assert all(c.kind in KINDS for c in getattr(self, "children", []))


def test_supervisor_state_machine() -> None:
    run_state_machine_as_test(
        SupervisorMachine,
        settings=settings(
            max_examples=150,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
