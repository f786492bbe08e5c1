"""What cannot cross in one frame is refused where the frame is built, with a clear error.

A 2 MiB map item once passed the map's check and made its worker lose its connection
over and over until the group gave up; a 2 MiB result was reported as "no worker
left to run it".
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lessor import LessorError, MapTimeout, ProtocolError, Runtime, TaskFailed
from lessor.protocol import wire
from lessor.protocol.messages import Task
from lessor.protocol.wire import Kind
from tests.workers.targets import big_result

TOO_BIG = wire.MAX_FRAME + 1024


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


def test_a_frame_over_the_limit_is_refused_where_it_is_built() -> None:
    with pytest.raises(ProtocolError, match="over the"):
        wire.frame(Kind.REPLY, 1, "", Task(0, [b"x" * TOO_BIG]))
    assert len(wire.frame(Kind.REPLY, 1, "", Task(0, [b"x" * 1000]))) < 1100


def test_a_map_item_too_big_for_a_frame_is_refused_before_any_worker_starts(
    runtime: Runtime,
) -> None:
    with pytest.raises(ProtocolError, match="map item 1"):
        runtime.map(len, [b"small", b"x" * TOO_BIG])
    assert runtime.events() == []  # no worker group was started


def test_a_result_too_big_for_a_frame_fails_its_item_saying_why(runtime: Runtime) -> None:
    results = runtime.map(big_result, [10, TOO_BIG], workers=1, return_exceptions=True)
    assert results[0] == b"x" * 10
    assert isinstance(results[1], TaskFailed) and "over the" in str(results[1])


def test_a_map_timeout_is_a_lessor_error_and_a_timeout_error() -> None:
    assert issubclass(MapTimeout, LessorError) and issubclass(MapTimeout, TimeoutError)
