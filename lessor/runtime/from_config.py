"""A running Runtime from a checked config (``lessor.specs.config``).

Children are added in an order that lets each find what it names: breakers first
(a pool may follow one), then pools, batchers and the memory manager. A runtime that
cannot be built whole is shut down before the error goes on, so that a bad config
leaves no actor, thread or socket behind.
"""

from __future__ import annotations

from typing import Any

from lessor.runtime.runtime import Runtime
from lessor.specs.config import TreeConfig

__all__ = ["build"]


def build(config: TreeConfig, **runtime_overrides: Any) -> Runtime:
    """Start a Runtime as ``config`` describes it.

    ``config.runtime`` (the file's ``[runtime]`` table) gives ``Runtime(...)``'s keyword
    arguments; ``runtime_overrides`` replace or add to them (``handle_signals=False``,
    say). Raises what ``Runtime`` or an ``add_*`` call raises, after a shutdown of what
    was started.
    """
    runtime = Runtime(**{**config.runtime, **runtime_overrides})
    try:
        for breaker in config.breakers:
            runtime.add_breaker(breaker)
        for pool in config.pools:
            runtime.add_pool(pool)
        for batcher in config.batchers:
            runtime.add_batcher(batcher)
        if config.memory is not None:
            runtime.add_memory(config.memory)
    except BaseException:
        runtime.shutdown(0.0)
        raise
    return runtime
