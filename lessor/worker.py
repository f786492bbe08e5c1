"""What runs first in a worker process: connect to the runtime, then run the target.

Workers are started with ``spawn`` (never a plain fork of the threaded runtime), so
the target must be importable: a module-level function.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from lessor.client import connect
from lessor.errors import ActorStopped, ShuttingDown
from lessor.specs import PoolSpec

__all__ = ["run_worker"]

log = logging.getLogger("lessor.worker")


def run_worker(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    env: dict[str, str],
    pools: dict[str, PoolSpec] | None = None,
) -> None:
    """Entry point of every worker process; an exception exits it with status 1.

    ``pools`` are the runtime's process-scoped pools: this worker runs its own pool
    of each (``connect().pool(name)``), under the runtime's global quota.
    """
    os.environ.update(env)
    client = connect()  # also how the worker notices its runtime dying (the reader sees EOF)
    client.local_specs.update(pools or {})
    try:
        target(*args)
    except (ShuttingDown, ActorStopped) as exc:
        # The runtime is going away: that ends the work, it is not this worker's failure.
        log.info("worker %s: %s; exiting", client.worker_id, exc)
    finally:
        client.close()
