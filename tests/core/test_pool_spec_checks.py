"""A PoolSpec that could never work is refused where it is made, naming the fields.

Not found later, at the first Acquire that starves: ``TokenFactory([1])`` cannot
fill ``max_size=3``, and a waiter for the third token would wait for ever.
"""

from __future__ import annotations

from typing import Any

import pytest

from lessor import CallableFactory, Factory, PoolSpec, TokenFactory
from lessor.factory import capacity_of
from lessor.worker.local_pools import QuotaFactory


def test_more_than_the_tokens_is_refused_naming_both_fields() -> None:
    with pytest.raises(ValueError, match=r"max_size must be <= the factory's capacity") as info:
        PoolSpec("t", TokenFactory([1]), max_size=3)
    assert "TokenFactory.capacity = 1" in str(info.value) and "got 3" in str(info.value)


def test_as_many_as_the_tokens_or_unbounded_tokens_are_fine() -> None:
    assert PoolSpec("t", TokenFactory(["a", "b"]), max_size=2).max_size == 2
    assert PoolSpec("t", TokenFactory(), max_size=1000).max_size == 1000
    assert capacity_of(TokenFactory()) is None
    assert capacity_of(TokenFactory(iter("abc"))) == 3  # any iterable, counted once


def test_a_factory_declares_its_capacity() -> None:
    class Gpus(Factory[int]):
        capacity = 2

        def create(self) -> int:
            return 0

    with pytest.raises(ValueError, match="capacity"):
        PoolSpec("g", Gpus(), max_size=4)
    assert PoolSpec("g", Gpus(), max_size=2, min_size=2).min_size == 2
    callable_one = CallableFactory(object)
    callable_one.capacity = 1
    with pytest.raises(ValueError, match="capacity"):
        PoolSpec("c", callable_one, max_size=2)


def test_a_wrapper_has_the_capacity_of_what_it_wraps() -> None:
    """A worker's side of a process-scoped pool wraps the user's factory (QuotaFactory)."""
    assert capacity_of(QuotaFactory(TokenFactory([1, 2]), None, 1.0)) == 2  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["3", 1.5, -1, True])
def test_a_capacity_that_is_no_count_is_refused(bad: Any) -> None:
    factory = TokenFactory()
    factory.capacity = bad
    with pytest.raises(ValueError, match="capacity must be an int >= 0 or None"):
        PoolSpec("t", factory, max_size=1)


def test_other_settings_that_cannot_work_together() -> None:
    with pytest.raises(ValueError, match=r"min_size must be <= max_size \(1\), got 2"):
        PoolSpec("t", TokenFactory(), max_size=1, min_size=2)
    with pytest.raises(ValueError, match=r"create_backoff_max must be >= create_backoff \(20\)"):
        PoolSpec("t", TokenFactory(), create_backoff=20)
    with pytest.raises(ValueError, match="max_total only caps scope='process' pools"):
        PoolSpec("t", TokenFactory(), max_total=3)  # silently ignored, it would mislead
    with pytest.raises(ValueError, match=r"min_size must be <= max_total \(2\)"):
        PoolSpec("t", TokenFactory(), scope="process", max_total=2, min_size=3, max_size=4)
    spec = PoolSpec("t", TokenFactory(), scope="process", max_total=2, min_size=2, max_size=4)
    assert spec.max_total == 2
