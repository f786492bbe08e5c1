"""Mutants for the demo's checks: factories that break what the checks guard."""

from __future__ import annotations

import threading
from typing import Any

from lessor.adapters.postgres import PostgresFactory

_LOCK = threading.Lock()
_SHARED: list[Any] = []  # this process's one connection


class SharedConnectionFactory(PostgresFactory):
    """Mutant: every connection it makes in a process is the first one (made under a
    lock, as creates run on several factory threads), so one backend is granted to
    every holder of the process's pool at once."""

    def create(self) -> Any:
        with _LOCK:
            if not _SHARED or _SHARED[0].closed:
                _SHARED[:] = [super().create()]
            return _SHARED[0]

    def destroy(self, resource: Any) -> None:
        """Keep it: the other holders are still using it."""
