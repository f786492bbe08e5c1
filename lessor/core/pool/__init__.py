"""The pool core: a pure state machine for one pool (see :mod:`.core`) and its decisions.

``from lessor.core.pool import PoolCore, Grant, ...`` is the way in. ``core`` has the
calls an owner makes, ``state`` the moves every call ends with, and the parts are
``waitqueue`` (waiters), ``slots`` (resources), ``ledger`` (leases out), ``backoff``
(a failing factory), ``recall`` (asking leases back), ``readiness`` (``wait()``),
``trying`` (``timeout=0``) and ``stats``.
"""

from __future__ import annotations

from lessor.core.decisions import (
    AskBack,
    Check,
    Create,
    Decision,
    Destroy,
    Drained,
    Expired,
    Fail,
    Filled,
    Grant,
    Reclaimed,
    Reset,
)
from lessor.core.pool.core import PoolCore
from lessor.core.pool.recall import RECALL_INTERVAL

__all__ = [
    "RECALL_INTERVAL",
    "AskBack",
    "Check",
    "Create",
    "Decision",
    "Destroy",
    "Drained",
    "Expired",
    "Fail",
    "Filled",
    "Grant",
    "PoolCore",
    "Reclaimed",
    "Reset",
]
