"""SpinBudget: how long a worker polls for a reply before it sleeps."""

from __future__ import annotations

from lessor.transport.spin import SpinBudget


def test_quick_replies_keep_a_budget_of_three_typical_replies() -> None:
    spin = SpinBudget()
    for _ in range(50):
        spin.observed(answered=True, waited=40e-6)
    assert abs(spin.budget - 120e-6) < 5e-6
    spin.observed(answered=True, waited=100e-6)  # a slow one, still inside the budget
    assert spin.budget > 120e-6


def test_the_budget_stays_within_its_bounds() -> None:
    spin = SpinBudget()
    for _ in range(50):
        spin.observed(answered=True, waited=1e-6)
    assert spin.budget == SpinBudget.MIN
    for _ in range(100):  # replies slow down, each just inside the budget: it follows
        spin.observed(answered=True, waited=0.9 * spin.budget)
    assert spin.budget == SpinBudget.MAX


def test_mostly_missing_spins_stop_and_a_probe_restarts_them() -> None:
    spin = SpinBudget()
    for _ in range(8):  # a pool that makes callers wait: every spin misses
        spin.observed(answered=False, waited=spin.budget)
        if not spin.budget:
            break
    assert spin.budget == 0, "spinning did not stop within 8 wasted spins"
    for _ in range(SpinBudget.PROBE_EVERY - 1):
        spin.skipped()
        assert spin.budget == 0
    spin.skipped()
    assert spin.budget == SpinBudget.MAX  # the probe
    spin.observed(answered=True, waited=30e-6)
    assert 0 < spin.budget < SpinBudget.MAX  # replies are quick again: spinning is back


def test_an_occasional_miss_does_not_stop_spinning() -> None:
    spin = SpinBudget()
    for i in range(200):
        if i % 10 == 0:
            spin.observed(answered=False, waited=spin.budget)
        else:
            spin.observed(answered=True, waited=40e-6)
        assert spin.budget > 0
