"""The demo's checks on hand-made hold logs: each fails on the break it guards."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lessor.demo.checks import Hold, double_grants, peak, percentile, run_checks


def hold(resource: str, start: int, end: int, pool: str = "pg") -> Hold:
    return Hold(pool, resource, 0, start, end)


def test_back_to_back_holds_of_one_resource_are_no_double_grant() -> None:
    assert double_grants([hold("1", 0, 10), hold("1", 10, 20), hold("2", 5, 15)]) == []


def test_overlapping_holds_of_one_resource_are_caught() -> None:
    a, b = hold("1", 0, 10), hold("1", 9, 20)
    assert double_grants([b, a]) == [(a, b)]


def test_a_hold_inside_a_long_one_is_caught() -> None:
    long, short = hold("1", 0, 100), hold("1", 40, 50)
    assert double_grants([hold("1", 20, 30), long, short])


def test_peak_counts_holds_at_one_instant_and_an_end_before_a_start() -> None:
    holds = [hold("1", 0, 10), hold("2", 10, 20), hold("3", 5, 12), hold("x", 0, 99, "http")]
    assert peak(holds, "pg") == 2
    assert peak(holds, "http") == 1


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 20)), max_size=30))
def test_peak_matches_a_brute_force_count(spans: list[tuple[int, int]]) -> None:
    holds = [hold(str(i), s, s + d) for i, (s, d) in enumerate(spans)]
    brute = max((sum(h.start_ns <= t < h.end_ns for h in holds) for t in range(80)), default=0)
    assert peak(holds, "pg") == brute


def test_the_checks_fail_on_each_break() -> None:
    fine = [hold("1", 0, 10), hold("2", 0, 10)]
    ok = run_checks({1, 2}, {1, 2}, fine, {"pg": 2})
    assert [c.ok for c in ok] == [True, True]
    lost = run_checks({1}, {1, 2}, fine, {"pg": 2})[0]
    assert not lost.ok and "1 acknowledged but not stored" in lost.detail
    twice = run_checks({1}, {1}, [*fine, hold("1", 5, 6)], {"pg": 3})[1]
    assert not twice.ok
    over = run_checks({1}, {1}, fine, {"pg": 1})[1]
    assert not over.ok and "over the cap" in over.detail
    nothing = run_checks(set(), set(), [], {"pg": 1})[1]
    assert not nothing.ok  # no holds logged: nothing was checked


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile(list(map(float, range(1, 101))), 0.99) == 99.0
