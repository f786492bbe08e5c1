"""The demo's final report: what the tree did, the faults and the two checks.

``as_dict()`` is what ``lessor demo --json`` prints; ``table()`` the readable form.
Counts come from the runtime's own snapshot taken just before shutdown; the acquire
waits and the checks from the workers' hold logs (:mod:`lessor.demo.checks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lessor.demo.checks import Check, Hold, percentile
from lessor.runtime.status import RuntimeStatus, reclaims_by_reason

__all__ = ["DemoReport", "make_report"]

FLUSH_REASONS = ("size", "time", "manual", "shutdown")
MEMORY_ACTIONS = ("warnings", "cleanups", "pauses", "resumes", "recycles", "leaks")


@dataclass(frozen=True)
class DemoReport:
    items: int
    acknowledged: int
    rows: int
    workers: int
    duration_s: float
    restarts: dict[str, int]
    reclaimed_by_reason: dict[str, int]
    breaker: dict[str, Any]
    batches: dict[str, Any]
    memory_actions: dict[str, int]
    acquire_wait_ms: dict[str, dict[str, float]]
    faults: list[dict[str, Any]]
    checks: list[Check]
    shutdown: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["checks"] = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks]
        out["ok"] = self.ok
        return out

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title="lessor demo: report", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        rows = [
            ("items", f"{self.acknowledged} of {self.items} acknowledged, {self.rows} rows "
                      f"in the table, {self.duration_s:.1f} s, {self.workers} workers"),
            ("restarts", _pairs(self.restarts)),
            ("leases reclaimed", _pairs(self.reclaimed_by_reason) or "none"),
            ("breaker api", f"{self.breaker['trips']} trips, {self.breaker['rejected']} calls "
                            f"refused while open, now {self.breaker['state']}"),
            ("batches", f"{self.batches['batches']} batches of {self.batches['mean_size']:.0f} "
                        f"rows; flushed by {_pairs(self.batches['flushed_by'])}; "
                        f"{self.batches['retries']} retries"),
            ("memory actions", _pairs(self.memory_actions) or "none"),
        ]  # fmt: skip
        for pool, waits in self.acquire_wait_ms.items():
            rows.append((f"acquire wait {pool}",
                         f"p50 {waits['p50']:.2f} ms, p99 {waits['p99']:.2f} ms "
                         f"over {waits['count']:.0f} leases"))  # fmt: skip
        for fault in self.faults:
            rows.append((f"fault {fault['kind']}", fault["detail"]))
        for check in self.checks:
            mark = "[green]PASS[/]" if check.ok else "[red]FAIL[/]"
            rows.append((f"check {check.name}", f"{mark} {check.detail}"))
        for label, text in rows:
            table.add_row(label, text)
        return table


def _pairs(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def make_report(
    *,
    items: int,
    acknowledged: int,
    rows: int,
    workers: int,
    duration_s: float,
    status: RuntimeStatus,
    holds: list[Hold],
    faults: list[dict[str, Any]],
    checks: list[Check],
) -> DemoReport:
    """The report from the runtime's last snapshot, the hold logs and the checks."""
    events = status.events  # counted since the start: a finished map's workers are gone
    api = status.breakers.get("api", {})
    rows_stats = status.batchers.get("rows", {})
    memory = status.memory or {}
    waits: dict[str, dict[str, float]] = {}
    for pool in sorted({h.pool for h in holds}):
        ms = [h.wait_ns / 1e6 for h in holds if h.pool == pool]
        waits[pool] = {"p50": round(percentile(ms, 0.5), 3),
                       "p99": round(percentile(ms, 0.99), 3), "count": len(ms)}  # fmt: skip
    return DemoReport(
        items=items,
        acknowledged=acknowledged,
        rows=rows,
        workers=workers,
        duration_s=round(duration_s, 2),
        restarts={
            "restarted after a failure": events.get("restarted", 0),
            "recycled for memory": events.get("recycled", 0),
        },
        reclaimed_by_reason=reclaims_by_reason(status),
        breaker={key: api.get(key, 0) for key in ("state", "trips", "rejected", "calls")},
        batches={
            "batches": rows_stats.get("batches", 0),
            "mean_size": rows_stats.get("mean_batch_size", 0.0),
            "retries": rows_stats.get("retries", 0),
            "flushed_by": {
                r: rows_stats.get(f"flushed_by_{r}", 0)
                for r in ("size", "time", "manual", "shutdown")
            },
        },
        memory_actions={k: memory.get(k, 0) for k in MEMORY_ACTIONS},
        acquire_wait_ms=waits,
        faults=faults,
        checks=checks,
    )
