"""Running a stateful checker against mutants: deliberately broken cores it must catch."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

__all__ = ["MUTANT_RUN", "assert_catches", "assert_passes"]

MUTANT_RUN = settings(
    max_examples=1000,  # a run stops at its first failure: each takes far fewer
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)


def assert_catches(machine: type[RuleBasedStateMachine], core: type[Any], pattern: str) -> str:
    """Run ``machine`` with its ``CORE`` swapped for the mutant ``core``: it must fail with
    an AssertionError matching ``pattern``. Returns the failure's first line."""
    mutated = type(f"{core.__name__}Machine", (machine,), {"CORE": core})
    with pytest.raises(AssertionError, match=pattern) as caught:
        run_state_machine_as_test(mutated, settings=MUTANT_RUN)
    return str(caught.value).splitlines()[0]


def assert_passes(machine: type[RuleBasedStateMachine], max_examples: int) -> None:
    """The real core passes under the mutant settings: the mutants fail for their bugs."""
    run_state_machine_as_test(machine, settings=settings(MUTANT_RUN, max_examples=max_examples))
