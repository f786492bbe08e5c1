"""The demo's PostgreSQL: ``LESSOR_PG_DSN`` if set, else an embedded server (pgserver)
in a temporary directory, stopped and removed at the end.

``restart()`` is the ``--restart-db`` fault: an immediate stop (a crash, as clients
see it) and a start again on the same data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from lessor.errors import LessorError

__all__ = ["EmbeddedPostgres", "crash"]


def crash(server: Any) -> None:
    """``pg_ctl stop -m immediate`` on a pgserver server: a crash, as clients see it."""
    import pgserver

    pg_ctl = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    command = [str(pg_ctl), "-D", str(server.pgdata), "stop", "-m", "immediate"]
    if os.geteuid() == 0:  # pgserver runs the server as its own user under root
        command = ["su", server.system_user, "-c", " ".join(command)]
    subprocess.run(command, check=True, capture_output=True)


def _private(directory: str) -> bool:
    try:
        return directory != "" and os.stat(directory).st_mode & 0o077 == 0
    except OSError:
        return False


class EmbeddedPostgres:
    """A PostgreSQL to use: ``dsn``; ``embedded`` says whether we started it."""

    def __init__(self) -> None:
        self.dsn = os.environ.get("LESSOR_PG_DSN", "")
        self.server: Any = None
        self._dir = ""
        if self.dsn:
            return
        self._dir = tempfile.mkdtemp(prefix="lessor-pg-")
        if not _private(os.environ.get("XDG_RUNTIME_DIR", "")):  # where pgserver locks:
            os.environ["XDG_RUNTIME_DIR"] = self._dir  # private (0700), or platformdirs warns
        try:
            import pgserver
        except ImportError:
            raise LessorError(
                "the demo needs PostgreSQL: pip install 'lessor[demo]' (embedded pgserver), "
                "or set LESSOR_PG_DSN"
            ) from None
        start = pgserver.get_server  # type: ignore[attr-defined]
        self.server = start(os.path.join(self._dir, "data"), cleanup_mode="stop")
        self.dsn = self.server.get_uri()

    @property
    def embedded(self) -> bool:
        return self.server is not None

    def restart(self) -> None:
        """Crash the server (``pg_ctl stop -m immediate``) and start it again."""
        if self.server is None:
            raise LessorError("--restart-db needs the embedded server (LESSOR_PG_DSN is set)")
        crash(self.server)
        self.server.ensure_postgres_running()

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
