"""Specs: small frozen dataclasses that say what to run, validated when made.

Defaults live here and nowhere else; each bad field raises ``ValueError`` naming it.
Pool defaults follow psycopg_pool (``acquire_timeout=30``, ``max_idle=600``,
``max_lifetime=3600`` minus up to 10% jitter) with poolboy's LIFO reuse.
"""

from __future__ import annotations

from lessor.specs.batch import BatchSpec
from lessor.specs.breaker import BreakerSpec, ErrorFilter
from lessor.specs.memory import MemorySpec, Thresholds
from lessor.specs.tree import Backoff, ChildSpec, PoolSpec, Restart, Strategy, SupervisorSpec

__all__ = [
    "Backoff",
    "BatchSpec",
    "BreakerSpec",
    "ChildSpec",
    "ErrorFilter",
    "MemorySpec",
    "PoolSpec",
    "Restart",
    "Strategy",
    "SupervisorSpec",
    "Thresholds",
]
