"""The independent check behind the no-double-grant tests: hold intervals never overlap."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence


def assert_exclusive(holds: Mapping[Hashable, Sequence[tuple[float, float]]], limit: int) -> None:
    """No resource held twice at once, and never more than ``limit`` held in all.

    ``holds`` maps each resource to the (began, ended) intervals its holders recorded
    while they held it, on a clock shared by every holder (``time.monotonic``).
    """
    events: list[tuple[float, int]] = []
    for resource, intervals in holds.items():
        ordered = sorted(intervals)
        for (_, end), (start, _) in itertools.pairwise(ordered):
            assert start >= end, f"{resource!r} was held twice at once"
        events += [(b, 1) for b, _ in ordered] + [(e, -1) for _, e in ordered]
    live = peak = 0
    for _, delta in sorted(events):  # at a tie the release (-1) sorts first
        live += delta
        peak = max(peak, live)
    assert peak <= limit, f"{peak} resources held at once, more than {limit}"
