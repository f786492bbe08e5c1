"""The demo end to end, short: its report's invariants, its live view, and a mutant
that its double-grant check must catch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from lessor.demo.run import DemoOptions, run_demo
from tests.support import pg
from tests.workers.demo_mutants import SharedConnectionFactory


@pytest.fixture
def database(server: pg.Postgres, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The suite's PostgreSQL for the demo (no second embedded server), and a private
    registry of runtimes."""
    monkeypatch.setenv("LESSOR_PG_DSN", server.dsn)
    monkeypatch.setenv("LESSOR_RUNTIME_DIR", str(tmp_path / "runtimes"))
    yield server.dsn


@pytest.mark.timeout(180)
def test_a_short_demo_kills_a_worker_trips_the_breaker_and_passes_its_checks(
    database: str,
) -> None:
    console = Console(record=True, force_terminal=True, width=160, height=200)
    options = DemoOptions(items=1000, workers=2, batch=20, scene_faults=("kill", "http_burst"),
                          http_latency=0.003)  # fmt: skip
    report = run_demo(options, console)

    assert report.ok, report.checks
    assert report.items == report.acknowledged == report.rows == 1000
    kill, burst = report.faults
    assert kill["kind"] == "kill" and kill["seen"], kill
    assert 0 < kill["figures"]["reclaim_ms"] < 1000
    assert report.reclaimed_by_reason.get("holder died", 0) >= 1
    assert report.restarts["restarted after a failure"] >= 1
    assert burst["kind"] == "http_burst" and burst["figures"]["trip_ms"] > 0, burst
    assert report.breaker["trips"] >= 1
    assert sum(report.batches["flushed_by"].values()) == report.batches["batches"] > 0
    assert set(report.acquire_wait_ms) == {"pg", "http"}
    assert report.acquire_wait_ms["pg"]["count"] >= 1000  # one lookup per item, or more
    assert report.shutdown["clean"]
    shown = console.export_text()
    assert "root" in shown and "map-" in shown and "pg" in shown and "api" in shown


@pytest.mark.timeout(180)
def test_a_connection_granted_twice_fails_the_double_grant_check(database: str) -> None:
    """Mutant: the pool's factory hands one connection to two holders at once."""
    shared = SharedConnectionFactory(database, application_name="lessor-demo")
    options = DemoOptions(
        items=400, workers=2, batch=20, scene=False, pg_max_total=8, pg_factory=shared
    )
    report = run_demo(options, Console(record=True, width=160))
    checks = {check.name: check for check in report.checks}
    assert not checks["no_double_grant"].ok, checks["no_double_grant"].detail
    assert "overlapping holds of one resource" in checks["no_double_grant"].detail
    assert not report.ok
