"""HTTP sessions through a lessor pool, against a real server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from urllib3.util import Retry

from lessor import PoolSpec, start_pool
from lessor.adapters.http import HttpSessionFactory
from tests.support.helpers import serving


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.requests = 0
        self.health_failures = 0  # how many more /health checks fail
        self.release = threading.Event()  # /hang answers once this is set
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out as two writes
    server: Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests += 1
        status = 200
        if self.path == "/hang":
            self.server.release.wait(10)
        elif self.path == "/health":
            with self.server.lock:
                if self.server.health_failures > 0:
                    self.server.health_failures -= 1
                    status = 500  # not one the Retry policy retries (502, 503, 504)
        body = b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    with serving(Server()) as srv:
        yield srv


def test_sessions_keep_their_connections_alive(server: Server) -> None:
    factory = HttpSessionFactory()
    pool = start_pool(PoolSpec("api", factory, max_size=2))
    try:
        for _ in range(50):
            with pool.lease(timeout=5) as session:
                assert session.get(f"{server.url}/ok").text == "ok"
        assert server.requests == 50
        assert server.connections <= 2  # one TCP connection per pooled session, reused
        stats = factory.stats()
        assert stats["requests"] == 50 and stats["connections_opened"] == server.connections
    finally:
        pool.stop(timeout=5)
    assert factory.stats() == {"sessions": 0, "connections_opened": server.connections,
                               "requests": 50}  # fmt: skip


def test_a_server_that_never_answers_times_out(server: Server) -> None:
    factory = HttpSessionFactory(timeout=(1.0, 0.2), retries=Retry(total=0))
    pool = start_pool(PoolSpec("api", factory, max_size=1))
    try:
        began = time.monotonic()
        hang = f"{server.url}/hang"
        with (
            pytest.raises(requests.RequestException, match="Read timed out"),
            pool.lease(timeout=5) as session,
        ):
            session.get(hang)  # no timeout given: the default applies
        assert time.monotonic() - began < 5
    finally:
        server.release.set()
        pool.stop(timeout=5)


def test_a_failing_health_check_recreates_the_session(server: Server) -> None:
    factory = HttpSessionFactory(health_url=f"{server.url}/health", check_idle_after=0)
    pool = start_pool(PoolSpec("api", factory, max_size=1))
    try:
        with pool.lease(timeout=5) as first:
            pass
        server.health_failures = 1  # the next check fails, the one after passes
        with pool.lease(timeout=5) as second:
            assert second is not first
            assert second.get(f"{server.url}/ok").ok
        stats = pool.stats()
        assert (stats.check_failures, stats.created, stats.destroyed) == (1, 2, 1)
    finally:
        pool.stop(timeout=5)


def test_bad_timeouts_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        HttpSessionFactory(timeout=(0, 1))
