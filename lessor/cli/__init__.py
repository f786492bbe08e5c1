"""The ``lessor`` command: ``demo`` (the main job on embedded defaults), ``run`` (a job
under a TOML tree), ``top`` and ``status`` (attach to a running runtime)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from lessor import __version__

__all__ = ["main"]


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="the whole job on embedded defaults: PostgreSQL, an HTTP service, workers, faults",
        description="Workers fetch items from a local HTTP service, transform them and "
        "batch-insert them into an embedded PostgreSQL, under pools, a breaker, a batcher "
        "and the memory manager, while faults are injected; ends with a report whose "
        "checks decide the exit code.",
    )
    demo.add_argument("--items", type=int, default=20_000, help="items to process (20000)")
    demo.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    demo.add_argument("--batch", type=int, default=50, help="items per task (50)")
    demo.add_argument("--pg-max-total", type=int, default=3,
                      help="PostgreSQL connections across all processes (3)")  # fmt: skip
    demo.add_argument("--kill-workers", type=int, default=0, metavar="N",
                      help="SIGKILL N more workers while they hold leases (0)")  # fmt: skip
    demo.add_argument("--http-failure-rate", type=float, default=0.0, metavar="F",
                      help="fraction of HTTP requests that fail (0.0)")  # fmt: skip
    demo.add_argument("--http-latency", type=float, default=0.001, metavar="S",
                      help="seconds the HTTP service takes per request (0.001)")  # fmt: skip
    demo.add_argument("--leak-memory", action="store_true",
                      help="one worker leaks memory until it is recycled")  # fmt: skip
    demo.add_argument("--restart-db", action="store_true",
                      help="crash PostgreSQL and start it again mid-run")  # fmt: skip
    demo.add_argument("--no-scene", action="store_true",
                      help="skip the scripted faults (a kill, an HTTP burst, a leak)")  # fmt: skip
    demo.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                      help="serve Prometheus metrics on 127.0.0.1:PORT (off)")  # fmt: skip
    demo.add_argument("--json", action="store_true", help="print the report as JSON")


def _demo(args: argparse.Namespace) -> int:
    from lessor.demo.run import DemoOptions, run_demo

    try:
        options = DemoOptions(
            items=args.items, workers=args.workers, batch=args.batch,
            pg_max_total=args.pg_max_total, scene=not args.no_scene,
            kill_workers=args.kill_workers, http_failure_rate=args.http_failure_rate,
            http_latency=args.http_latency, leak_memory=args.leak_memory,
            restart_db=args.restart_db, metrics_port=args.metrics_port,
        )  # fmt: skip
    except ValueError as exc:
        print(f"lessor demo: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_demo(options)
    except KeyboardInterrupt:  # Ctrl-C: the runtime has drained and shut down
        print("lessor demo: interrupted; shut down", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        from rich.console import Console

        Console().print(report.table())
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    from lessor.cli import run, top

    parser = argparse.ArgumentParser(prog="lessor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lessor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    run.add_parser(sub)
    top.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "run":
        return run.run(args)
    if args.command == "top":
        return top.run_top(args)
    return top.run_status(args)


if __name__ == "__main__":
    sys.exit(main())
