"""lessor: supervised resource actors for multiprocessing.

Pools hand out time-limited, tracked leases through messages (``Acquire``,
``Release``); the same messages work in-process through pykka and, later, across
processes as msgpack frames.
"""

from __future__ import annotations

from lessor.errors import (
    AcquireTimeout,
    DoubleRelease,
    ExpiredLease,
    ForeignLease,
    LeaseError,
    LessorError,
    NoSuchPool,
    PoolClosed,
    PoolExhausted,
    ProtocolError,
    ShuttingDown,
    StaleLease,
    UnknownLease,
)
from lessor.factory import CallableFactory, Factory, TokenFactory
from lessor.handle import PoolHandle, start_pool
from lessor.messages import (
    Acquire,
    GetStats,
    Lease,
    LeaseExpired,
    PoolStats,
    Release,
    Renew,
    decode,
    encode,
)
from lessor.specs import PoolSpec

__version__ = "0.1.0"

__all__ = [
    "Acquire",
    "AcquireTimeout",
    "CallableFactory",
    "DoubleRelease",
    "ExpiredLease",
    "Factory",
    "ForeignLease",
    "GetStats",
    "Lease",
    "LeaseError",
    "LeaseExpired",
    "LessorError",
    "NoSuchPool",
    "PoolClosed",
    "PoolExhausted",
    "PoolHandle",
    "PoolSpec",
    "PoolStats",
    "ProtocolError",
    "Release",
    "Renew",
    "ShuttingDown",
    "StaleLease",
    "TokenFactory",
    "UnknownLease",
    "decode",
    "encode",
    "start_pool",
]
