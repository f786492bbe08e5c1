"""lessor: supervised resource actors for multiprocessing.

Pools hand out time-limited, tracked leases through messages (``Acquire``,
``Release``); circuit breakers share one state across every process. The same
messages work in-process through pykka and across processes as msgpack frames.
"""

from __future__ import annotations

from lessor.core.batch_decisions import BatchEvent
from lessor.errors import (
    AcquireTimeout,
    ActorRestarted,
    ActorStopped,
    Backpressure,
    BatchItemFailed,
    BreakerOpen,
    DoubleRelease,
    ExpiredLease,
    ForeignLease,
    LeaseError,
    LessorError,
    MapInterrupted,
    MapTimeout,
    NoSuchBatcher,
    NoSuchBreaker,
    NoSuchPool,
    NotPortable,
    PoolClosed,
    PoolExhausted,
    ProtocolError,
    RemoteTraceback,
    RuntimeStopped,
    ShuttingDown,
    StaleLease,
    SupervisorGaveUp,
    TaskFailed,
    UnknownLease,
    WorkersFailed,
)
from lessor.factory import CallableFactory, Factory, TokenFactory
from lessor.handles.batcher import Batcher
from lessor.handles.breaker import Breaker
from lessor.handles.local import start_pool
from lessor.handles.memory import MemoryManager, register_cleanup, unregister_cleanup
from lessor.handles.pool import PoolHandle
from lessor.holder import bind_actor
from lessor.protocol.messages import (
    Acquire,
    BatcherStats,
    BreakerStats,
    Describe,
    GetStats,
    Lease,
    LeaseExpired,
    LocalPoolStats,
    MemoryStats,
    PoolInfo,
    PoolStats,
    Release,
    Renew,
    decode,
    encode,
)
from lessor.resources import Resources
from lessor.runtime.imap import MapIterator
from lessor.runtime.process_stats import ProcessPoolStats
from lessor.runtime.runtime import Runtime, ShutdownReport
from lessor.specs import (
    Backoff,
    BatchSpec,
    BreakerSpec,
    ChildSpec,
    MemorySpec,
    PoolSpec,
    SupervisorSpec,
    Thresholds,
)
from lessor.supervisor.child import ChildRef
from lessor.worker.bootstrap import worker_count, worker_index
from lessor.worker.client import Client, connect

__version__ = "0.1.0"

__all__ = [
    "Acquire",
    "AcquireTimeout",
    "ActorRestarted",
    "ActorStopped",
    "Backoff",
    "Backpressure",
    "BatchEvent",
    "BatchItemFailed",
    "BatchSpec",
    "Batcher",
    "BatcherStats",
    "Breaker",
    "BreakerOpen",
    "BreakerSpec",
    "BreakerStats",
    "CallableFactory",
    "ChildRef",
    "ChildSpec",
    "Client",
    "Describe",
    "DoubleRelease",
    "ExpiredLease",
    "Factory",
    "ForeignLease",
    "GetStats",
    "Lease",
    "LeaseError",
    "LeaseExpired",
    "LessorError",
    "LocalPoolStats",
    "MapInterrupted",
    "MapIterator",
    "MapTimeout",
    "MemoryManager",
    "MemorySpec",
    "MemoryStats",
    "NoSuchBatcher",
    "NoSuchBreaker",
    "NoSuchPool",
    "NotPortable",
    "PoolClosed",
    "PoolExhausted",
    "PoolHandle",
    "PoolInfo",
    "PoolSpec",
    "PoolStats",
    "ProcessPoolStats",
    "ProtocolError",
    "Release",
    "RemoteTraceback",
    "Renew",
    "Resources",
    "Runtime",
    "RuntimeStopped",
    "ShutdownReport",
    "ShuttingDown",
    "StaleLease",
    "SupervisorGaveUp",
    "SupervisorSpec",
    "TaskFailed",
    "Thresholds",
    "TokenFactory",
    "UnknownLease",
    "WorkersFailed",
    "bind_actor",
    "connect",
    "decode",
    "encode",
    "register_cleanup",
    "start_pool",
    "unregister_cleanup",
    "worker_count",
    "worker_index",
]
