from __future__ import annotations

import json

import pytest

from lessor import cli
from lessor.cli import main
from tests.overlap import DuplicateTokens

SMALL = ["demo", "--threads", "4", "--jobs", "50", "--slots", "2", "--workers", "1"]


def test_demo_shares_slots_without_clashes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(SMALL) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["clashes"], report["clashes_in_workers"]) == (0, 0)
    assert report["workers_finished"]
    stats = report["stats"]
    assert stats["acquired"] == 251  # 5 x 50 jobs and one thread that died holding a slot
    assert stats["released"] == 250
    assert stats["reclaimed"] == 1
    assert stats["size"] == 2
    assert report["tree"]["children"][0]["id"] == "slots"
    assert report["shutdown"]["clean"]


@pytest.mark.parametrize(
    ("who", "args"),
    [("threads", ["--threads", "4", "--workers", "1"]),
     ("workers", ["--threads", "0", "--workers", "2"])],
)  # fmt: skip
def test_demo_exits_non_zero_when_a_slot_is_held_twice(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    who: str,
    args: list[str],
) -> None:
    """Mutant: a factory that makes token 0 twice, so both slots are the same one."""
    monkeypatch.setattr(cli, "TokenFactory", DuplicateTokens)
    assert main(["demo", *args, "--jobs", "50", "--slots", "2"]) == 1
    report = json.loads(capsys.readouterr().out)
    in_threads = report["clashes"] - report["clashes_in_workers"]
    assert (in_threads if who == "threads" else report["clashes_in_workers"]) > 0
