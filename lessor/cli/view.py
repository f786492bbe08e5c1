"""The live view of a runtime: one frame drawn from a status dict, and its one-line form.

Pure rendering: everything comes from ``RuntimeStatus.as_dict()`` (or the same dict
as it crossed the control socket), nothing is read from clocks or actors, so a frame
is the same for the same dict and can be snapshot-tested. Any part may be missing (no
memory manager, no workers, a part named in ``unavailable``): it is left out, never
an error. Used by ``lessor top``, ``lessor status`` and the demo's live view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

__all__ = ["plain_line", "render", "short_holder"]

_MB = 1 << 20
_GB = 1 << 30
#: Holders listed per pool before the rest are summed as "+N more".
MAX_HOLDERS = 8

_STATE_STYLE = {
    "running": "green", "closed": "green", "ok": "green",
    "restarting": "yellow", "half_open": "yellow", "warn": "yellow", "starting": "yellow",
    "cleanup": "yellow", "failed": "bold red", "exited": "red", "open": "bold red",
    "forced_open": "bold red", "pause": "red", "restart": "bold red", "done": "dim",
    "stopped": "dim", "disabled": "dim",
}  # fmt: skip
_MEMORY_ACTIONS = ("memory_cleanup", "memory_pause", "memory_recycle", "memory_leak")


def render(
    status: dict[str, Any], *, title: str = "lessor", progress: RenderableType | None = None
) -> RenderableType:
    """One frame: a header, the tree, then pools, breakers, batchers and memory (each
    only if the runtime has some) and a line of event counts.

    ``title`` (default "lessor") heads the frame; ``progress`` (default None), e.g. a
    rich progress bar, is drawn above it, so a caller's own progress shares the frame.
    """
    parts: list[RenderableType] = []
    if progress is not None:
        parts.append(progress)
    parts.append(_header(status, title))
    parts.append(_tree(status.get("tree"), status.get("uptime_s")))
    tables = (
        _pools(status.get("pools") or {}),
        _breakers(status.get("breakers") or {}),
        _batchers(status.get("batchers") or {}),
        _memory(status.get("memory")),
    )
    for table in tables:
        if table is not None:
            parts.append(table)
    parts.append(_events(status))
    return Group(*parts)


def plain_line(status: dict[str, Any]) -> str:
    """One short line for a non-terminal (CI, a pipe), e.g. ``lessor: workers 4/4 up,
    restarts 1, pools pg 3/8 leased, breaker api closed, batch rows pending 12,
    reclaimed 2``."""
    parts = []
    workers = status.get("workers") or []
    if workers:
        up = sum(1 for w in workers if w.get("running"))
        parts.append(f"workers {up}/{len(workers)} up")
    parts.append(f"restarts {(status.get('events') or {}).get('restarted', 0)}")
    pools = status.get("pools") or {}
    if pools:
        each = [f"{name} {_num(p, 'leased')}/{_max(p)}" for name, p in pools.items()]
        parts.append(f"pools {', '.join(each)} leased")
    breakers = status.get("breakers") or {}
    if breakers:
        each = [f"{name} {b.get('state', '?')}" for name, b in breakers.items()]
        parts.append(f"breaker{'s' if len(each) > 1 else ''} {', '.join(each)}")
    batchers = status.get("batchers") or {}
    if batchers:
        each = [f"{name} pending {b.get('pending', 0)}" for name, b in batchers.items()]
        parts.append(f"batch {', '.join(each)}")
    memory = _memory_note(status.get("memory"))
    if memory:
        parts.append(memory)
    parts.append(f"reclaimed {_reclaimed(pools, status)}")
    unavailable = status.get("unavailable") or []
    if unavailable:
        parts.append(f"unavailable {' '.join(unavailable)}")
    return "lessor: " + ", ".join(parts)


def short_holder(holder: str) -> str:
    """A holder as a person reads it: a worker by its slot (``workers-1.0.1``), a lease
    cache as "cache", anything else of the runtime's own process (threads, actors)
    as "runtime"."""
    kind, _, rest = holder.partition(":")
    if kind == "worker":
        return _slot(rest.rpartition(":")[0] or rest)
    return "cache" if kind == "cache" else "runtime"


# -- parts -----------------------------------------------------------------------------


def _header(status: dict[str, Any], title: str) -> Text:
    text = Text.assemble((title, "bold"), f"  pid {status.get('pid', '?')}")
    if status.get("version"):
        text.append(f"  lessor {status['version']}")
    if status.get("uptime_s") is not None:
        text.append(f"  up {_uptime(status['uptime_s'])}")
    unavailable = status.get("unavailable") or []
    if unavailable:
        text.append(f"  unavailable: {', '.join(unavailable)}", style="bold red")
    return text


def _tree(root: dict[str, Any] | None, uptime_s: Any = None) -> RenderableType:
    """The supervision tree; the root, which keeps no uptime of its own, gets the runtime's."""
    if not root:
        return Text("tree: unavailable", style="red")
    tree = Tree(_label({"uptime_s": uptime_s, **root}), guide_style="dim")
    stack = [(tree, root)]
    while stack:
        branch, node = stack.pop()
        for child in node.get("children") or []:
            stack.append((branch.add(_label(child)), child))
    return tree


def _label(node: dict[str, Any]) -> Text:
    """``path kind state restarts uptime`` (what the node says of these); a worker
    process adds its pid and the leases it holds."""
    kind = str(node.get("kind", "?"))
    text = Text.assemble((str(node.get("path") or node.get("id", "?")), "bold"), " ",
                         (kind, "cyan"))  # fmt: skip
    if node.get("strategy"):
        text.append(f" {node['strategy']}", style="cyan")
    if node.get("state") is not None:
        state = str(node["state"])
        text.append(f" {state}", style=_STATE_STYLE.get(state, ""))
    if node.get("restarts") is not None:
        restarts = node["restarts"]
        text.append(f" restarts {restarts}", style="yellow" if restarts else "dim")
    if node.get("uptime_s") is not None:
        text.append(f" up {_uptime(node['uptime_s'])}")
    if kind == "process":
        text.append(f" pid {node.get('pid') or '-'}", style="magenta")
        leases = node.get("leases") or {}
        held = " ".join(f"{pool}={n}" for pool, n in sorted(leases.items()))
        text.append(f" leases {held}" if held else " no leases", style="" if held else "dim")
    return text


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", expand=False)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    return table


def _text_last(table: Table) -> None:
    """The last column holds words: left-aligned, folded rather than cut on a narrow screen."""
    table.columns[-1].justify = "left"
    table.columns[-1].overflow = "fold"


def _pools(pools: dict[str, dict[str, Any]]) -> Table | None:
    if not pools:
        return None
    table = _table("pools", "pool", "scope", "size/max", "leased", "idle", "waiting",
                   "wait ms p50/p99", "leases by holder")  # fmt: skip
    _text_last(table)
    for name, pool in pools.items():
        stats = pool.get("stats") or {}
        p50, p99 = stats.get("wait_ms_p50"), stats.get("wait_ms_p99")
        wait = f"{_ms(p50)}/{_ms(p99)}"
        table.add_row(name, str(pool.get("scope", "?")), f"{_num(pool, 'size')}/{_max(pool)}",
                      str(_num(pool, "leased")), str(_num(pool, "idle")),
                      str(_num(pool, "waiting")), wait, _holders(pool))  # fmt: skip
    return table


def _holders(pool: dict[str, Any]) -> str:
    """Leases per holder, shortened and summed by short name, most first."""
    counts: dict[str, int] = {}
    per_process = pool.get("per_process")
    if per_process is not None:  # process-scoped: each process's own pool says
        pairs: Iterable[tuple[str, int]] = (
            (_slot(k), s.get("leased", 0)) for k, s in per_process.items()
        )
    else:
        holders = (pool.get("stats") or {}).get("holders") or {}
        pairs = ((short_holder(h), n) for h, n in holders.items())
    for who, n in pairs:
        if n:
            counts[who] = counts.get(who, 0) + n
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = " ".join(f"{who}={n}" for who, n in ranked[:MAX_HOLDERS])
    rest = sum(n for _, n in ranked[MAX_HOLDERS:])
    if rest:
        shown += f" +{len(ranked) - MAX_HOLDERS} holders ({rest} leases)"
    return shown or "-"


def _breakers(breakers: dict[str, dict[str, Any]]) -> Table | None:
    if not breakers:
        return None
    table = _table("breakers", "breaker", "state", "failure rate", "calls", "trips", "rejected")
    for name, b in breakers.items():
        state = str(b.get("state", "?"))
        table.add_row(name, Text(state, _STATE_STYLE.get(state, "")),
                      _pct(b.get("failure_rate")), str(b.get("calls", 0)),
                      str(b.get("trips", 0)), str(b.get("rejected", 0)))  # fmt: skip
    return table


def _batchers(batchers: dict[str, dict[str, Any]]) -> Table | None:
    if not batchers:
        return None
    table = _table("batchers", "batcher", "pending", "in flight", "waiting", "completed",
                   "failed", "batches by flush")  # fmt: skip
    _text_last(table)
    for name, b in batchers.items():
        reasons = [f"{why} {b.get(f'flushed_by_{why}', 0)}"
                   for why in ("size", "time", "manual", "shutdown")
                   if b.get(f"flushed_by_{why}")]  # fmt: skip
        table.add_row(name, str(b.get("pending", 0)), str(b.get("in_flight", 0)),
                      str(b.get("waiting", 0)), str(b.get("completed", 0)),
                      str(b.get("failed", 0)), ", ".join(reasons) or "-")  # fmt: skip
    return table


def _memory(memory: dict[str, Any] | None) -> RenderableType | None:
    """Each process's memory against its limit, then the machine's on one line."""
    if not memory:
        return None
    table = _table("memory", "process", "pid", "rss MB", "limit MB", "of limit", "level", "doing")
    _text_last(table)
    for proc in memory.get("processes") or []:
        level = str(proc.get("level", "?"))
        flags = [flag for flag in ("paused",) if proc.get(flag)]
        if proc.get("recycling"):
            flags.append(f"recycling ({proc['recycling']})")
        table.add_row(_slot(str(proc.get("key", "?"))), str(proc.get("pid") or "-"),
                      _mb(proc.get("rss")), _mb(proc.get("limit")), _pct(proc.get("fraction")),
                      Text(level, _STATE_STYLE.get(level, "")), " ".join(flags))  # fmt: skip
    machine = memory.get("machine")
    if not machine:
        return table
    level = str(machine.get("level", "?"))
    line = Text.assemble(
        f"machine: used {_gb(machine.get('used'))} of {_gb(machine.get('total'))} GB, "
        f"available {_gb(machine.get('available'))} GB, limit {_gb(machine.get('limit'))} GB,"
        " level ", (level, _STATE_STYLE.get(level, "")),
        ", all paused" if memory.get("paused_all") else "",
    )  # fmt: skip
    return Group(table, line)


def _events(status: dict[str, Any]) -> Text:
    events = status.get("events") or {}
    trips = sum(b.get("trips", 0) for b in (status.get("breakers") or {}).values())
    actions = {k.removeprefix("memory_"): events[k] for k in _MEMORY_ACTIONS if events.get(k)}
    memory = sum(actions.values())
    detail = f" ({', '.join(f'{k} {n}' for k, n in actions.items())})" if actions else ""
    return Text(
        f"events: restarts {events.get('restarted', 0)}, failures {events.get('failed', 0)}, "
        f"reclaimed {_reclaimed(status.get('pools') or {}, status)}, breaker trips {trips}, "
        f"memory actions {memory}{detail}, recycled {events.get('recycled', 0)}"
    )


# -- small formats ---------------------------------------------------------------------


def _memory_note(memory: dict[str, Any] | None) -> str:
    """ "memory <level>" when the machine or a process is past ok, or any is paused."""
    if not memory:
        return ""
    procs = memory.get("processes") or []
    paused = sum(1 for p in procs if p.get("paused"))
    worst = [str(p.get("level")) for p in procs if p.get("level") not in (None, "ok")]
    level = (memory.get("machine") or {}).get("level", "ok")
    if level == "ok" and not worst and not paused and not memory.get("paused_all"):
        return ""
    note = f"memory {level}" + (f", {len(worst)} processes over ok" if worst else "")
    return note + (f", {paused} paused" if paused else "")


def _reclaimed(pools: dict[str, dict[str, Any]], status: dict[str, Any]) -> int:
    """Leases reclaimed, from the pools' own counts (the events when no pool says)."""
    counts = [(p.get("stats") or {}).get("reclaimed") for p in pools.values()]
    if any(c is not None for c in counts):
        return sum(c or 0 for c in counts)
    return int((status.get("events") or {}).get("lease_reclaimed", 0))


def _num(pool: dict[str, Any], key: str) -> Any:
    return (pool.get("stats") or {}).get(key, "?")


def _max(pool: dict[str, Any]) -> Any:
    """A pool's bound: ``max_total`` across processes for a process-scoped one."""
    if pool.get("scope") == "process" and pool.get("max_total") is not None:
        return pool["max_total"]
    return pool.get("max_size", "?")


def _slot(worker_id: str) -> str:
    """``root/workers-1.0.1`` -> ``workers-1.0.1``; anything else as it is."""
    return worker_id.rpartition("/")[2] or worker_id


def _uptime(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _ms(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _mb(value: Any) -> str:
    return f"{value / _MB:.1f}" if isinstance(value, (int, float)) else "-"


def _gb(value: Any) -> str:
    return f"{value / _GB:.1f}" if isinstance(value, (int, float)) else "-"


def _pct(value: Any) -> str:
    if not isinstance(value, (int, float)) or value < 0:
        return "-"
    return f"{value * 100:.0f}%"
