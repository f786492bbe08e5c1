"""lessor on Ray: the same pools, one limit for the whole cluster (``pip install 'lessor[ray]'``).

In the driver, after ``ray.init()``::

    slots = PoolSpec("gpu-slots", TokenFactory(), max_size=2, max_total=3, scope="process")
    cluster = lessor.ray.start([slots])

starts a node agent on every node (:mod:`.agent`), a global pool actor per pool
(:mod:`.global_pool`) and ``lessor-root``, which keeps the specs and starts agents on
nodes that join later. In any task or actor of the cluster, ``lessor.connect()``
reaches its node's agent, and the API is a worker's: ``pool(name)``, ``lease()``,
the errors. ``cluster.stop()`` (or :func:`stop` from any driver) drains and removes
it all. docs/ray.md says what is guaranteed when a holder, an agent or a node dies.
"""

from __future__ import annotations

from lessor.ray.cluster import RayLessor, find, start, stop, worker_env
from lessor.ray.names import NAMESPACE
from lessor.ray.root import Root

__all__ = ["NAMESPACE", "RayLessor", "Root", "find", "start", "stop", "worker_env"]
