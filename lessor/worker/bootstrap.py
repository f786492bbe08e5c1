"""What runs first in a worker process: connect to the runtime, then run the target.

Workers are started with ``spawn`` (never a plain fork of the threaded runtime): a
fresh interpreter imports the target by its qualified name and rebuilds the
arguments from a pickle. :func:`check_spawnable` checks both at the call, before any
process starts; what still fails in the worker (a module it cannot import) fails
there, inside :func:`run_worker`, which leaves the traceback for its group to read.
"""

from __future__ import annotations

import ast
import functools
import io
import logging
import os
import pickle
import signal
import sys
import traceback
import types
from collections.abc import Callable
from multiprocessing.context import get_spawning_popen, set_spawning_popen
from multiprocessing.reduction import ForkingPickler
from typing import Any, cast

from lessor.errors import ActorStopped, LessorError, ShuttingDown
from lessor.specs import BreakerSpec, PoolSpec
from lessor.specs.batch import BatchLimits
from lessor.worker.client import connect

__all__ = ["ENV_TRACEBACK", "Spawned", "check_spawnable", "run_worker", "worker_count",
           "worker_index"]  # fmt: skip

log = logging.getLogger("lessor.worker")

#: Where a worker writes the traceback of the exception that ended it (set by its group).
ENV_TRACEBACK = "LESSOR_WORKER_TRACEBACK"

#: (slot index, group size) of this worker process; set by run_worker, None elsewhere.
_slot: tuple[int, int] | None = None


def worker_index() -> int:
    """This worker's slot in its group, ``0 .. worker_count() - 1``.

    A restarted (or recycled) worker takes its slot's index again, so the index can
    name a shard of the work: ``items[worker_index()::worker_count()]``. Raises
    LessorError outside a worker process of a Runtime (in the runtime's own process,
    or in a process a worker started itself).
    """
    return _where()[0]


def worker_count() -> int:
    """The number of workers (slots) in this worker's group: ``n`` of ``spawn_workers``
    (for ``map``, the workers it started). LessorError outside a worker process."""
    return _where()[1]


def _where() -> tuple[int, int]:
    if _slot is None:
        raise LessorError(
            "lessor.worker_index() and worker_count() work in worker processes started "
            "by a Runtime (spawn_workers, map, imap), not in this process"
        )
    return _slot


def _forget_slot() -> None:
    global _slot  # noqa: PLW0603 - a forked child of a worker is not that worker
    _slot = None


os.register_at_fork(after_in_child=_forget_slot)


def check_spawnable(
    target: Callable[..., Any], args: tuple[Any, ...] = (), what: str = "worker target"
) -> None:
    """Raise TypeError unless a spawned worker can import ``target`` and rebuild ``args``.

    A function or class must be importable by qualified name: not a lambda, not
    defined inside a function, and in ``__main__`` only if that has a file a worker
    can run again, and not under its ``if __name__ == "__main__":`` (a worker runs the
    file as ``__mp_main__``, without that block). Everything must pickle as it will
    when the worker is spawned, so a spawn-context Queue passes and a fork-context one
    fails here, not in the worker.
    """
    if not callable(target):
        raise TypeError(f"{what} {target!r} is not callable")
    label = what
    if isinstance(target, (types.FunctionType, type)):
        module, qualname = target.__module__, target.__qualname__
        label = f"{what} {module}.{qualname}"
        why = "a spawned worker imports its target by name"
        if "<lambda>" in qualname:
            raise TypeError(f"{label} is a lambda: {why}; define it with def at module level")
        if "<locals>" in qualname:
            raise TypeError(f"{label} is defined inside a function: {why}; move it to module level")
        main = sys.modules.get("__main__")
        if module == "__main__" and not getattr(main, "__file__", None):
            raise TypeError(
                f"{label} is defined in __main__, which has no file (an interactive session "
                f"or python -c): {why}; move it to a module"
            )
    _check_pickles(target, label)
    for index, arg in enumerate(args):
        _check_pickles(arg, f"args[{index}] of {label}")


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd


class _DryRun:
    """Stands in for the spawning Popen: pickles see a spawn under way, nothing is shared."""

    DupFd = _Fd

    @staticmethod
    def duplicate_for_child(fd: int) -> int:
        return fd


class _UnderMainGuard(Exception):
    def __init__(self, obj: types.FunctionType | type) -> None:
        super().__init__(obj)
        self.obj = obj


class _DryPickler(ForkingPickler):
    """Pickles as a spawn would, and stops at a function or class of ``__main__`` that a
    worker cannot find: one defined under ``if __name__ == "__main__":``."""

    def persistent_id(self, obj: Any) -> None:
        if (
            isinstance(obj, (types.FunctionType, type))
            and getattr(obj, "__module__", None) == "__main__"
            and str(getattr(obj, "__qualname__", "")).split(".")[0] in _main_guarded()
        ):
            raise _UnderMainGuard(obj)


def _check_pickles(obj: Any, what: str) -> None:
    previous = get_spawning_popen()
    set_spawning_popen(cast(Any, _DryRun()))
    try:
        _DryPickler(io.BytesIO()).dump(obj)
    except _UnderMainGuard as exc:
        found = exc.obj
        head = what if found is obj else f"{what}: __main__.{found.__qualname__}"
        raise TypeError(
            f"{head} is defined under `if __name__ == '__main__':`, which a spawned worker "
            f"does not run; move it to module level"
        ) from None
    except Exception as exc:
        raise TypeError(
            f"{what} cannot be sent to a spawned worker: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        set_spawning_popen(previous)


def _main_guarded() -> frozenset[str]:
    """Names the main script binds only under ``if __name__ == "__main__":``.

    Empty when that cannot be told: no file, a file that cannot be read or parsed (a
    worker then reports what it finds), or a ``from ... import *`` outside the guard.
    """
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not isinstance(path, str):
        return frozenset()
    try:
        stat = os.stat(path)
    except OSError:
        return frozenset()
    return _guarded_names(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _guarded_names(path: str, _mtime_ns: int, _size: int) -> frozenset[str]:
    try:
        with open(path, "rb") as source:
            tree = ast.parse(source.read(), path)
    except (OSError, SyntaxError, ValueError):
        return frozenset()
    outside: set[str] = set()
    guarded: set[str] = set()
    _bindings(tree, False, outside, guarded)
    if "*" in outside:
        return frozenset()
    return frozenset(guarded - outside)


def _bindings(node: ast.AST, under: bool, outside: set[str], guarded: set[str]) -> None:
    """Collect the module-level names bound in ``node``, outside or under a main guard.

    Generous to "outside": any name stored anywhere at module level counts (a loop or
    ``with`` target, a walrus), so only a name bound nowhere else can be refused.
    """
    names = guarded if under else outside
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names.add(node.name)
        return  # its body is not module level
    if isinstance(node, ast.Lambda):
        return
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        for alias in node.names:
            names.add(alias.asname or alias.name.split(".")[0])
        return
    if isinstance(node, ast.If) and _is_main_guard(node.test):
        for statement in node.body:
            _bindings(statement, True, outside, guarded)
        for statement in node.orelse:
            _bindings(statement, under, outside, guarded)
        return
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        names.add(node.id)
    elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
        names.add(node.name)
    elif isinstance(node, ast.MatchMapping) and node.rest:
        names.add(node.rest)
    for child in ast.iter_child_nodes(node):
        _bindings(child, under, outside, guarded)


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = {_literal(test.left), _literal(test.comparators[0])}
    return sides == {"name:__name__", "str:__main__"}


def _literal(expr: ast.expr) -> str:
    if isinstance(expr, ast.Name):
        return f"name:{expr.id}"
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return f"str:{expr.value}"
    return ""


class Spawned:
    """A target and its arguments on their way to a worker.

    Pickled while the worker is spawned (so spawn-only objects such as Queues cross),
    but rebuilt only inside :func:`run_worker`, so an error rebuilding them is the
    worker's own reported failure, with its traceback.
    """

    def __init__(self, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.target = target
        self.args = args

    def load(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.target, self.args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Pickled, (bytes(ForkingPickler.dumps((self.target, self.args))),))


class _Pickled:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def load(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        target, args = pickle.loads(self.data)
        return target, args


def run_worker(
    work: Spawned | _Pickled,
    env: dict[str, str],
    pools: dict[str, PoolSpec] | None = None,
    breakers: dict[str, BreakerSpec] | None = None,
    batchers: dict[str, BatchLimits] | None = None,
    slot: tuple[int, int] | None = None,
) -> None:
    """Entry point of every worker process; an exception exits it with status 1.

    SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and the
    runtime drains its workers itself (as billiard and the usual Pool recipe do). An
    uncaught exception's traceback is written where ``LESSOR_WORKER_TRACEBACK`` says
    (and then not printed to stderr too; it is, if it could not be written).
    ``pools`` are the runtime's process-scoped pools: this worker runs its own pool
    of each (``connect().pool(name)``), under the runtime's global quota; ``breakers``
    are the runtime's breakers, for ``connect().breaker(name)``, and ``batchers`` what
    ``connect().batcher(name)`` needs of its batchers. ``slot`` is the worker's (index,
    group size), for :func:`worker_index` and :func:`worker_count`.
    """
    global _slot  # noqa: PLW0603 - one worker per process
    _slot = slot
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the spawner
    os.environ.update(env)
    try:
        target, args = work.load()
        client = connect()  # also how the worker notices its runtime dying (reader sees EOF)
        client.local_specs.update(pools or {})
        client.breaker_specs.update(breakers or {})
        client.batcher_limits.update(batchers or {})
        try:
            target(*args)
        except (ShuttingDown, ActorStopped) as exc:
            # The runtime is going away: that ends the work, it is not this worker's failure.
            log.info("worker %s: %s; exiting", client.worker_id, exc)
        finally:
            client.close()
    except SystemExit:
        raise
    except BaseException:
        if _leave_traceback(env.get(ENV_TRACEBACK)):
            # Its group has the traceback (and reports it): exit 1 without printing it
            # too, or a group restarting a failing worker floods the terminal.
            raise SystemExit(1) from None
        raise  # nowhere to leave it: multiprocessing prints it and exits 1


def _leave_traceback(path: str | None) -> bool:
    """Write the current exception's traceback to ``path``; whether that worked."""
    if not path:
        return False
    try:
        with open(path, "w") as out:
            out.write(traceback.format_exc())
    except OSError:
        return False
    return True
