"""Attaching to a running runtime from outside: ``lessor top`` and ``lessor status``.

A runtime with ``control=True`` writes two files, both 0600 and removed at shutdown:

- its **control key** (hex), ``control.key`` next to its socket, in the socket's
  private 0700 directory. It proves any ``control/...`` id to the node, and such a
  peer may only ask ``control:`` targets: it can read the runtime, not borrow from
  it. The key is never printed or logged;
- a **registry entry**, ``<pid>.json`` in :func:`registry_dir`, that says where the
  socket is, so that ``lessor top`` finds the runtimes of this user.

Everything on the socket is msgpack frames, as for workers: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from pathlib import Path
from typing import Any

from lessor.errors import LessorError
from lessor.protocol import wire
from lessor.protocol.messages import ErrorReply, GetStatus, Status
from lessor.protocol.wire import Kind
from lessor.transport.handshake import error_from_reply, open_connection
from lessor.transport.node import CONTROL

__all__ = [
    "ControlClient",
    "ControlError",
    "RuntimeEntry",
    "find_runtimes",
    "publish",
    "registry_dir",
    "unpublish",
]

KEY_FILE = "control.key"
#: The control target a peer asks for status.
STATUS_TARGET = f"{CONTROL}:status"


class ControlError(LessorError):
    """No runtime to attach to, or it refused us (no key, wrong key, gone)."""


@dataclass(frozen=True)
class RuntimeEntry:
    """A runtime that can be attached to: its pid, socket, start time and command."""

    pid: int
    socket: str
    started: float
    argv: list[str]


def registry_dir() -> Path:
    """Where runtimes say where they are: ``$LESSOR_RUNTIME_DIR``, else
    ``~/.cache/lessor/runtimes`` (made 0700 on first use)."""
    explicit = os.environ.get("LESSOR_RUNTIME_DIR")
    return Path(explicit) if explicit else Path.home() / ".cache" / "lessor" / "runtimes"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ControlError(f"{path} must be a directory of this user's, mode 0700")
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def publish(address: str, key: bytes) -> Path:
    """Write the key next to ``address`` and this runtime's registry entry; the entry."""
    _write_private(Path(address).parent / KEY_FILE, key.hex())
    entry = _private_dir(registry_dir()) / f"{os.getpid()}.json"
    _write_private(entry, json.dumps({"pid": os.getpid(), "socket": address,
                                      "started": time.time(), "argv": sys.argv}))  # fmt: skip
    return entry


def unpublish(entry: Path) -> None:
    with contextlib.suppress(OSError):
        entry.unlink()


def find_runtimes() -> list[RuntimeEntry]:
    """This user's runtimes that are running now, oldest first (stale entries removed)."""
    found = []
    directory = registry_dir()
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            raw = json.loads(path.read_text())
            entry = RuntimeEntry(int(raw["pid"]), str(raw["socket"]), float(raw["started"]),
                                 [str(a) for a in raw.get("argv", [])])  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(entry.pid) and os.path.exists(entry.socket):
            found.append(entry)
        elif not _alive(entry.pid):
            unpublish(path)
    return sorted(found, key=lambda e: e.started)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pick(pid: int | None = None, socket: str | None = None) -> str:
    """The socket to attach to: ``socket``, the runtime ``pid``, or the only one running."""
    if socket:
        return socket
    runtimes = find_runtimes()
    if pid is not None:
        for entry in runtimes:
            if entry.pid == pid:
                return entry.socket
        raise ControlError(f"no lessor runtime with pid {pid} can be attached to")
    if not runtimes:
        raise ControlError(
            f"no lessor runtime to attach to in {registry_dir()} (start one with "
            "Runtime(control=True), LESSOR_CONTROL=1, or control = true in a config's "
            "[runtime] table)"
        )
    if len(runtimes) > 1:
        listed = ", ".join(f"{e.pid} ({' '.join(e.argv)[:40]})" for e in runtimes)
        raise ControlError(f"several runtimes are running; choose one with --pid: {listed}")
    return runtimes[0].socket


class ControlClient:
    """A control connection to the runtime whose socket is ``address``.

    The key is read from the 0600 file next to the socket: whoever cannot read it
    cannot attach (ControlError, saying so; the key itself is never shown).
    """

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        key_path = Path(address).parent / KEY_FILE
        try:
            key = bytes.fromhex(key_path.read_text().strip())
        except PermissionError:
            raise ControlError(f"cannot read {key_path}: attaching needs the runtime's key "
                               "(run as the user who started it)") from None  # fmt: skip
        except (OSError, ValueError):
            raise ControlError(f"no control key at {key_path}: the runtime was not started "
                               "with control=True, or has shut down") from None  # fmt: skip
        self.timeout = timeout
        me = f"{CONTROL}/{os.getpid()}/{secrets.token_hex(4)}"
        try:
            self._conn = open_connection(address, key, me, timeout)
        except AuthenticationError:
            raise ControlError(f"{address} refused the key in {key_path}: attaching needs "
                               "the key of the runtime that made the socket") from None  # fmt: skip
        except (OSError, EOFError, LessorError) as exc:
            raise ControlError(f"cannot attach to {address}: {exc}") from None
        self._corr = itertools.count(1)

    def status(self) -> dict[str, Any]:
        """A snapshot of the runtime (``RuntimeStatus.as_dict()``)."""
        corr = next(self._corr)
        try:
            self._conn.send_bytes(wire.frame(Kind.ASK, corr, STATUS_TARGET, GetStatus()))
            timed = wire.Deadline(self._conn, time.monotonic() + self.timeout)
            while True:
                kind, got, _, answer = wire.parse(timed.recv_bytes(wire.MAX_FRAME))
                if got == corr:
                    break
        except (OSError, EOFError) as exc:
            raise ControlError(f"the runtime hung up: {exc}") from None
        if kind == Kind.ERROR and isinstance(answer, ErrorReply):
            raise error_from_reply(answer)
        if not isinstance(answer, Status):
            raise ControlError(f"unexpected answer {type(answer).__name__}")
        return answer.body

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
