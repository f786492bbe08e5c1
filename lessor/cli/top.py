"""``lessor top`` and ``lessor status``: attach to a running runtime through its control
socket and show its tree (see :mod:`lessor.transport.control`).

Attaching needs the runtime's key, read from the 0600 file next to its socket; a
refusal names that file, never the key. Exit codes: 0 when shown (and when ``top``'s
runtime goes away or Ctrl-C ends it: both are how a watch ends), 2 when there is
nothing to attach to or attaching is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from lessor.errors import LessorError
from lessor.transport.control import ControlClient, ControlError, pick

__all__ = ["add_parsers", "run_status", "run_top"]

#: Seconds one status request may take before ``top`` or ``status`` gives up.
ASK_TIMEOUT = 10.0


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid", type=int, default=None,
                        help="the runtime's pid (default: the only one running)")  # fmt: skip
    parser.add_argument("--socket", default=None, metavar="PATH",
                        help="the runtime's socket (default: found by --pid or as the only "
                        "one running)")  # fmt: skip


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``top`` and ``status`` on the ``lessor`` command's subparsers."""
    top = subparsers.add_parser(
        "top",
        help="a live view of a running runtime's tree",
        description="Attach to a runtime started with control=True (or LESSOR_CONTROL=1) "
        "and show its tree, pools, breakers, batchers and memory, refreshed every "
        "interval. On a non-terminal, prints one plain line per interval. Ctrl-C quits.",
    )
    _target_args(top)
    top.add_argument("--interval", type=_seconds, default=1.0, metavar="S",
                     help="seconds between refreshes (1.0)")  # fmt: skip
    top.add_argument("--once", action="store_true", help="print one full frame and exit")
    status = subparsers.add_parser(
        "status",
        help="a snapshot of a running runtime's tree",
        description="Attach to a runtime started with control=True and print its status "
        "once: one rendered frame, or the whole snapshot as JSON.",
    )
    _target_args(status)
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")


def _attach(args: argparse.Namespace) -> ControlClient:
    """A control connection to the runtime ``args`` names (ControlError if none)."""
    return ControlClient(pick(pid=args.pid, socket=args.socket), timeout=ASK_TIMEOUT)


def _first(command: str, args: argparse.Namespace) -> tuple[ControlClient, dict[str, Any]] | int:
    """Attach and take the first snapshot; on failure, the message is printed and 2 returned."""
    try:
        client = _attach(args)
    except ControlError as exc:
        return _refused(command, exc)
    try:
        return client, client.status()
    except LessorError as exc:
        client.close()
        return _refused(command, exc)


def _refused(command: str, exc: Exception) -> int:
    print(f"lessor {command}: {exc}", file=sys.stderr)
    return 2


def _console() -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console()


def run_status(args: argparse.Namespace) -> int:
    """``lessor status``: one snapshot, as a rendered frame or (``--json``) JSON."""
    console = None if args.json else _console()
    if not args.json and console is None:
        return _refused("status", ImportError("needs rich: pip install 'lessor[cli]'"))
    first = _first("status", args)
    if isinstance(first, int):
        return first
    client, body = first
    client.close()
    if console is None:  # --json
        print(json.dumps(body, indent=2, default=str))
        return 0
    from lessor.cli.view import render

    console.print(render(body, title="lessor status"))
    return 0


def run_top(args: argparse.Namespace) -> int:
    """``lessor top``: a live view (a plain line per interval on a non-terminal)."""
    console = _console()
    if console is None:
        return _refused("top", ImportError("needs rich: pip install 'lessor[cli]'"))
    first = _first("top", args)
    if isinstance(first, int):
        return first
    client, body = first
    from lessor.cli.view import render

    title = f"lessor top (every {args.interval:g}s, Ctrl-C quits)"
    try:
        with client:
            if args.once:
                console.print(render(body, title="lessor top"))
            elif console.is_terminal:
                _live(client, body, console, title, args.interval)
            else:
                _plain(client, body, args.interval)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `lessor top | head`: the reader has seen enough
        return 0
    except LessorError as exc:
        print(f"lessor top: the runtime (pid {body.get('pid')}) has gone away: {exc}",
              file=sys.stderr)  # fmt: skip
    return 0


def _live(client: ControlClient, body: dict[str, Any], console: Any, title: str,
          interval: float) -> None:  # fmt: skip
    """Redraw in place until the runtime goes away (LessorError) or Ctrl-C."""
    from rich.live import Live

    from lessor.cli.view import render

    # No auto refresh: no thread of rich's; each frame is drawn once, when it comes.
    with Live(render(body, title=title), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(render(client.status(), title=title), refresh=True)


def _plain(client: ControlClient, body: dict[str, Any], interval: float) -> None:
    """One plain line per interval, for a pipe or CI log."""
    from lessor.cli.view import plain_line

    while True:
        print(plain_line(body), flush=True)
        time.sleep(interval)
        body = client.status()
