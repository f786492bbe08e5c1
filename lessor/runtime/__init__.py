"""The supervising process: the Runtime facade, graceful shutdown, and map jobs."""

from lessor.runtime.runtime import Runtime
from lessor.runtime.shutdown import ShutdownReport

__all__ = ["Runtime", "ShutdownReport"]
