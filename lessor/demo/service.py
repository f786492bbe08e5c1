"""The demo's HTTP dependency: a local JSON service whose failure rate and latency can
be changed while it runs (the fault scene's "burst of HTTP failures").

``GET /items/<n>`` answers ``{"id": n, "text": ...}`` after ``latency`` seconds, or
503 with probability ``failure_rate``. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ItemService"]


class ItemService:
    """A threaded HTTP server on 127.0.0.1; ``url`` is its base, ``close()`` stops it.

    ``failure_rate`` (default 0.0, a fraction in [0, 1]) and ``latency`` (default
    0.001 s) may be set at any time; ``served`` and ``failed`` count answers.
    """

    def __init__(self, failure_rate: float = 0.0, latency: float = 0.001) -> None:
        self.failure_rate = failure_rate
        self.latency = latency
        self.served = 0
        self.failed = 0
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the pool's sessions reuse connections

            def setup(self) -> None:
                super().setup()  # headers and body go out in two writes: without this,
                # Nagle waits for the client's delayed ACK, 40 ms per request
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                service._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the demo reports what matters."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="lessor-demo-http", daemon=True
        )
        self._thread.start()

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        if self.latency > 0:
            time.sleep(self.latency)  # the dependency's own work
        fail = random.random() < self.failure_rate
        _, _, tail = request.path.rpartition("/")
        if fail or not tail.isdigit():
            status, body = (503, b'{"error": "unavailable"}') if fail else (404, b"{}")
        else:
            status = 200
            body = json.dumps({"id": int(tail), "text": f"item {tail} " * 4}).encode()
        with self._lock:
            self.served += 1
            self.failed += fail
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> ItemService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
