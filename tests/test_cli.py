from __future__ import annotations

import json

import pytest

from lessor.cli import main


def test_demo_shares_slots_without_clashes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--threads", "4", "--jobs", "50", "--slots", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clashes"] == 0
    stats = report["stats"]
    assert stats["acquired"] == stats["released"] == 200
    assert stats["size"] <= 2
