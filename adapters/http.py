"""HTTP sessions for lessor pools (requests). Install with ``lessor[http]``.

Each pooled ``requests.Session`` mounts one ``HTTPAdapter`` with a keep-alive
connection pool and urllib3 ``Retry`` (configured, not hand-written). Every
request gets default connect and read timeouts, so none can wait forever. With a
``health_url`` a session that sat idle is checked on borrow and replaced if the
check fails. ``stats()`` shows keep-alive at work: TCP connections opened versus
requests made.
"""

from __future__ import annotations

import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from lessor.factory import Factory, IdleClock

__all__ = ["HttpSessionFactory", "TimeoutSession"]

DEFAULT_RETRY = Retry(total=3, backoff_factor=0.1, status_forcelist=(502, 503, 504))


class TimeoutSession(requests.Session):
    """A Session whose requests always have a timeout (``timeout=None`` is not allowed)."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.default_timeout = timeout
        self.requests_made = 0

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        self.requests_made += 1
        return super().request(method, url, *args, **kwargs)


class HttpSessionFactory(Factory[TimeoutSession]):
    """Makes keep-alive sessions. ``timeout`` is (connect, read) seconds."""

    def __init__(
        self,
        *,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        retries: Retry = DEFAULT_RETRY,
        timeout: tuple[float, float] = (3.05, 30.0),
        health_url: str | None = None,
        check_idle_after: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if min(timeout) <= 0:
            raise ValueError(f"timeout must be (connect > 0, read > 0), got {timeout!r}")
        self.pool_connections = pool_connections
        self.pool_maxsize = pool_maxsize
        self.retries = retries
        self.timeout = timeout
        self.health_url = health_url
        self.check_idle_after = check_idle_after
        self.headers = dict(headers or {})
        self._sessions: dict[int, TimeoutSession] = {}
        self._clock = IdleClock()
        self._retired = {"connections": 0, "requests": 0}
        self._lock = threading.Lock()

    def create(self) -> TimeoutSession:
        session = TimeoutSession(self.timeout)
        adapter = HTTPAdapter(
            pool_connections=self.pool_connections,
            pool_maxsize=self.pool_maxsize,
            max_retries=self.retries,
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update(self.headers)
        with self._lock:
            self._sessions[id(session)] = session
        self._clock.mark(session)
        return session

    def destroy(self, resource: TimeoutSession) -> None:
        opened = _connections_opened(resource)
        self._clock.forget(resource)
        with self._lock:
            self._sessions.pop(id(resource), None)
            self._retired["connections"] += opened
            self._retired["requests"] += resource.requests_made
        resource.close()

    def check(self, resource: TimeoutSession) -> bool:
        """Only a session idle past ``check_idle_after`` is checked, against ``health_url``."""
        if self.health_url is None:
            return True
        if self._clock.idle_for(resource) < self.check_idle_after:
            return True
        try:
            return bool(resource.get(self.health_url, timeout=self.timeout).ok)
        except requests.RequestException:
            return False

    def reset(self, resource: TimeoutSession) -> None:
        self._clock.mark(resource)

    def is_fatal(self, exc: BaseException) -> bool:
        return isinstance(exc, requests.ConnectionError)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a process-scoped pool's spec travels to its workers): settings only."""
        state = self.__dict__.copy()
        for name in ("_sessions", "_retired", "_lock"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sessions = {}
        self._retired = {"connections": 0, "requests": 0}
        self._lock = threading.Lock()

    def stats(self) -> dict[str, int]:
        """Keep-alive reuse: TCP connections opened versus requests made, all sessions."""
        with self._lock:
            live = list(self._sessions.values())
            connections = self._retired["connections"]
            made = self._retired["requests"]
        for session in live:
            connections += _connections_opened(session)
            made += session.requests_made
        return {"sessions": len(live), "connections_opened": connections, "requests": made}


def _connections_opened(session: requests.Session) -> int:
    total = 0
    adapters = {id(a): a for a in session.adapters.values()}  # one adapter, two prefixes
    for adapter in adapters.values():
        if isinstance(adapter, HTTPAdapter):
            for key in list(adapter.poolmanager.pools.keys()):
                pool = adapter.poolmanager.pools.get(key)
                total += getattr(pool, "num_connections", 0)
    return total
