from __future__ import annotations

import json

import pytest

from lessor.cli import main


def test_demo_shares_slots_without_clashes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--threads", "4", "--jobs", "50", "--slots", "2", "--workers", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clashes"] == 0
    stats = report["stats"]
    assert stats["acquired"] == 251  # 5 x 50 jobs and one thread that died holding a slot
    assert stats["released"] == 250
    assert stats["reclaimed"] == 1
    assert stats["size"] <= 2
    assert report["tree"]["children"][0]["id"] == "slots"
    assert report["shutdown"]["clean"]
