"""Log lines and errors name an actor by its path in the tree, not by a pykka URN.

A user added ``root/slots``; a warning about ``PoolActor (urn:uuid:...)`` tells them
nothing about which of their pools it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from lessor import PoolSpec, Runtime
from lessor.factory import TokenFactory
from tests.support.actors import crash_actor, crashable
from tests.support.helpers import wait_until


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with Runtime(handle_signals=False) as runtime:
        yield runtime


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_an_unexpected_message_is_logged_under_the_pools_path(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    pool = runtime.add_pool(PoolSpec("slots", TokenFactory()))
    with caplog.at_level(logging.WARNING):
        pool.actor_ref.tell("what is this")
        assert wait_until(lambda: any("unexpected message" in m for m in _lines(caplog)), 5)
    line = next(m for m in _lines(caplog) if "unexpected message" in m)
    assert line.startswith("root/slots (PoolActor)")
    assert "urn:" not in line


def test_a_crash_is_logged_under_the_pools_path(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    pool = crashable(runtime, PoolSpec("flaky", TokenFactory()))
    with caplog.at_level(logging.ERROR):
        crash_actor(pool.route, 10)  # type: ignore[arg-type]
    crashes = [m for m in _lines(caplog) if "pool bug" in m or "Unhandled exception" in m]
    assert crashes, _lines(caplog)
    assert all("urn:" not in m for m in _lines(caplog))
    assert any("root/flaky" in m for m in crashes)
