"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import pg


@pytest.fixture(scope="module")
def server() -> Iterator[pg.Postgres]:
    """A real PostgreSQL server for one test module (``tests/support/pg.py``).

    test_http.py has a ``server`` of its own, its HTTP server, which takes precedence there.
    """
    postgres = pg.start()
    yield postgres
    pg.stop(postgres)
