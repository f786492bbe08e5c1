"""After shutdown a runtime makes nothing new: no socket, no thread, no temp dir."""

from __future__ import annotations

import glob
import tempfile

import pytest

from lessor import Runtime, RuntimeStopped


def test_the_node_is_not_made_again_after_shutdown() -> None:
    before = set(glob.glob(f"{tempfile.gettempdir()}/lessor-*"))
    runtime = Runtime(handle_signals=False)
    runtime.shutdown(timeout=1)
    with pytest.raises(RuntimeStopped):
        runtime.node  # noqa: B018 - the property is what makes a node
    assert set(glob.glob(f"{tempfile.gettempdir()}/lessor-*")) == before
