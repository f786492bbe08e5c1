"""``lessor run --config tree.toml module:function``: a user's job under a configured tree.

The file (docs/config.md) describes the runtime's pools, breakers, batchers and memory
manager; ``[workers]`` says how many supervised worker processes run ``function`` and
how they restart. Each worker reaches the pools with ``lessor.connect()``. The command
waits for every worker, shuts the runtime down and prints its report as one line on
stderr.

Exit status: 0 every worker finished; 1 the job failed (the group gave up, or the tree
could not start); 2 the config or the target is unusable; 130 Ctrl-C (after a drain);
128 + N for another signal N that shut the runtime down.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from lessor.errors import LessorError, WorkersFailed
from lessor.runtime.from_config import build
from lessor.runtime.shutdown import ShutdownReport
from lessor.specs.config import ConfigError, load
from lessor.specs.config_lines import import_object

__all__ = ["add_parser", "resolve", "run", "summary"]

#: The worker group's name: its workers are ``root/job.<slot>.<incarnation>``.
GROUP = "job"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``run`` on the ``lessor`` command's subparsers (its handler: ``func``)."""
    parser = subparsers.add_parser(
        "run",
        help="run module:function in supervised worker processes under a TOML-described tree",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="module:function", help="a module-level function")
    parser.add_argument("--config", "-c", required=True, metavar="TREE.toml",
                        help="the tree: pools, breakers, batchers, memory, workers")  # fmt: skip
    parser.add_argument("--workers", "-w", type=_count, default=None, metavar="N",
                        help="worker processes (default: [workers] count, else CPUs)")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``args.target`` under ``args.config``; the exit status (see the module doc)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m`: the job's modules are found here
    try:
        config = load(args.config)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 2
    try:
        target = resolve(args.target)
    except ValueError as exc:
        print(f"lessor run: {exc}", file=sys.stderr)
        return 2
    workers = config.workers
    n = args.workers or workers.count or os.cpu_count() or 1
    try:
        runtime = build(config)
    except (LessorError, ValueError, TypeError) as exc:
        print(f"lessor run: the tree did not start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    code = 1
    try:
        group = runtime.spawn_workers(
            target, n, workers.args, workers.restart, name=GROUP,
            max_restarts=workers.max_restarts, max_seconds=workers.max_seconds,
            backoff=workers.backoff,
        )  # fmt: skip
        runtime.join(group)
        code = 0
    except TypeError as exc:  # the target or its args cannot be spawned
        print(f"lessor run: {exc}", file=sys.stderr)
        code = 2
    except WorkersFailed as exc:
        print(f"lessor run: {args.target} failed: {exc}", file=sys.stderr)
    except LessorError as exc:  # the runtime stopped under the job
        print(f"lessor run: {type(exc).__name__}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C: the runtime has drained and shut down
        print("lessor run: interrupted", file=sys.stderr)
        code = 130
    finally:
        print(summary(runtime.shutdown()), file=sys.stderr)
    return code


def resolve(ref: str) -> Callable[..., Any]:
    """The module-level function ``"package.module:function"`` names (ValueError if none).

    It is imported here as each worker will import it, so that a typo is reported once,
    before any process starts.
    """
    module, _, name = ref.partition(":")
    try:
        function = import_object(ref)
    except ValueError as exc:
        raise ValueError(f"{ref}: {exc}") from None
    if "." in name or not inspect.isfunction(function):
        kind = "class" if isinstance(function, type) else type(function).__name__
        raise ValueError(f"{ref}: not a module-level function of {module} (a {kind}): workers "
                         "are spawned and import their function by name")  # fmt: skip
    return function


def summary(report: ShutdownReport) -> str:
    """A shutdown report as one line."""
    parts = [f"shut down in {report.duration_s:.2f}s"]
    if report.clean:
        parts.append("clean")
    if report.reclaimed or report.reclaimed_from_caller:
        parts.append(f"{len(report.reclaimed) + len(report.reclaimed_from_caller)} leases "
                     "reclaimed")  # fmt: skip
    if report.killed:
        parts.append(f"killed {', '.join(report.killed)}")
    if report.unflushed:
        parts.append("unflushed " + ", ".join(f"{k}={v}" for k, v in report.unflushed.items()))
    if report.failure:
        parts.append(f"failure: {' '.join(report.failure.split())}")
    return "lessor run: " + "; ".join(parts)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value
