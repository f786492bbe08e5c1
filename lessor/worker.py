"""What runs first in a worker process: connect to the runtime, then run the target.

Workers are started with ``spawn`` (never a plain fork of the threaded runtime): a
fresh interpreter imports the target by its qualified name and rebuilds the
arguments from a pickle. :func:`check_spawnable` checks both at the call, before any
process starts; what still fails in the worker (a module it cannot import) fails
there, inside :func:`run_worker`, which leaves the traceback for its group to read.
"""

from __future__ import annotations

import contextlib
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

from lessor.client import connect
from lessor.errors import ActorStopped, ShuttingDown
from lessor.specs import PoolSpec

__all__ = ["ENV_TRACEBACK", "Spawned", "check_spawnable", "run_worker"]

log = logging.getLogger("lessor.worker")

#: Where a worker writes the traceback of the exception that ended it (set by its group).
ENV_TRACEBACK = "LESSOR_WORKER_TRACEBACK"


def check_spawnable(
    target: Callable[..., Any], args: tuple[Any, ...] = (), what: str = "worker target"
) -> None:
    """Raise TypeError unless a spawned worker can import ``target`` and rebuild ``args``.

    A function or class must be importable by qualified name: not a lambda, not
    defined inside a function, and in ``__main__`` only if that has a file a worker
    can run again. Everything must pickle as it will when the worker is spawned, so
    a spawn-context Queue passes and a fork-context one fails here, not in the worker.
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


def _check_pickles(obj: Any, what: str) -> None:
    previous = get_spawning_popen()
    set_spawning_popen(cast(Any, _DryRun()))
    try:
        ForkingPickler.dumps(obj)
    except Exception as exc:
        raise TypeError(
            f"{what} cannot be sent to a spawned worker: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        set_spawning_popen(previous)


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
) -> None:
    """Entry point of every worker process; an exception exits it with status 1.

    SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and the
    runtime drains its workers itself (as billiard and the usual Pool recipe do). An
    uncaught exception's traceback is written where ``LESSOR_WORKER_TRACEBACK`` says.
    ``pools`` are the runtime's process-scoped pools: this worker runs its own pool
    of each (``connect().pool(name)``), under the runtime's global quota.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the spawner
    os.environ.update(env)
    try:
        target, args = work.load()
        client = connect()  # also how the worker notices its runtime dying (reader sees EOF)
        client.local_specs.update(pools or {})
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
        _leave_traceback(env.get(ENV_TRACEBACK))
        raise


def _leave_traceback(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError), open(path, "w") as out:
            out.write(traceback.format_exc())
