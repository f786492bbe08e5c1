"""Hostile input at the node: every bad frame is refused, good workers never notice."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import socket
import time
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from multiprocessing import connection as mpc
from pathlib import Path

import msgpack
import pytest

from lessor import GetStats, PoolSpec, Runtime, TokenFactory
from lessor.protocol import wire
from lessor.protocol.messages import Acquire, ErrorReply, GiveBack, Hello, PoolStats, Release
from lessor.protocol.wire import Kind
from lessor.transport.node import ENV_AUTHKEY
from lessor.worker.client import open_connection
from tests.support.helpers import wait_until
from tests.workers import targets


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(handle_signals=False)
    rt.add_pool(PoolSpec("slots", TokenFactory(), max_size=3))
    yield rt
    rt.shutdown(timeout=5)


_fuzzers = itertools.count()


def authed(rt: Runtime, worker_id: str | None = None) -> mpc.Connection:
    """A connection that passed the handshake as a worker the node made an environment for."""
    worker_id = worker_id or f"fuzz-{next(_fuzzers)}"
    key = bytes.fromhex(rt.node.env(worker_id)[ENV_AUTHKEY])
    return open_connection(rt.node.address, key, worker_id)


def error_of(conn: mpc.Connection) -> ErrorReply:
    assert conn.poll(5)
    kind, _, _, answer = wire.parse(conn.recv_bytes())
    assert kind == Kind.ERROR and isinstance(answer, ErrorReply)
    return answer


def still_serves(conn: mpc.Connection) -> None:
    conn.send_bytes(wire.frame(Kind.ASK, 99, "slots", GetStats()))
    assert conn.poll(5)
    kind, corr, _, answer = wire.parse(conn.recv_bytes())
    assert (kind, corr) == (Kind.REPLY, 99) and isinstance(answer, PoolStats)


def test_wrong_authkey_and_unauthenticated_bytes_are_refused(runtime: Runtime) -> None:
    node = runtime.node
    node.env("fuzz")
    with pytest.raises(AuthenticationError):
        open_connection(node.address, b"not the key", "fuzz")
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(node.address)
        raw.sendall(os.urandom(512))
    assert wait_until(lambda: node.stats.refused == 2)
    assert node.stats.connections == 0


def test_a_connection_must_open_with_hello(runtime: Runtime) -> None:
    node = runtime.node
    conn = mpc.Client(node.address, family="AF_UNIX")  # no HELLO, no key: hung up, unanswered
    conn.send_bytes(wire.frame(Kind.ASK, 1, "slots", GetStats()))
    assert conn.poll(5)
    with pytest.raises(EOFError):
        conn.recv_bytes()
    key = bytes.fromhex(node.env("x")[ENV_AUTHKEY])
    old = mpc.Client(node.address, family="AF_UNIX")  # the right key, the wrong version
    old.send_bytes(wire.frame(Kind.HELLO, 0, "", Hello(wire.PROTOCOL_VERSION + 1, "x", 1)))
    mpc.answer_challenge(old, key)
    mpc.deliver_challenge(old, key)
    assert "protocol version" in error_of(old).text
    assert wait_until(lambda: node.stats.refused == 2)


def test_bad_frames_get_errors_and_the_connection_keeps_serving(runtime: Runtime) -> None:
    conn = authed(runtime)
    good = wire.frame(Kind.ASK, 7, "slots", Acquire("slots", 5.0))
    cases = [
        (good[:-3], "ProtocolError"),  # truncated
        (b"\xc1\xc1", "ProtocolError"),  # not msgpack
        (msgpack.packb([1, 2, 3]), "ProtocolError"),  # wrong arity
        (msgpack.packb([9, 1, "slots", None]), "ProtocolError"),  # unknown kind
        (
            msgpack.packb([int(Kind.ASK), 1, "slots", [1, "slots", "soon", 0, None]]),
            "ProtocolError",
        ),
        (msgpack.packb([int(Kind.ASK), 1, "slots", [99]]), "ProtocolError"),  # unknown tag
        (msgpack.packb([int(Kind.ASK), 1, "slots", None]), "ProtocolError"),  # no message
        (wire.frame(Kind.REPLY, 1, "slots", GetStats()), "ProtocolError"),  # not the worker's
        (wire.frame(Kind.ASK, 1, "nope", GetStats()), "NoSuchPool"),
        (wire.frame(Kind.ASK, 1, "slots", Release("slots/x/1")), "UnknownLease"),
        (wire.frame(Kind.ASK, 1, "slots", Acquire("other", 1.0)), "NoSuchPool"),
    ]
    for frame, error in cases:
        conn.send_bytes(frame)
        assert error_of(conn).error == error, frame
        still_serves(conn)
    rng = random.Random(7)
    for _ in range(200):
        conn.send_bytes(rng.randbytes(rng.randrange(1, 64)))
        assert error_of(conn).error == "ProtocolError"
    still_serves(conn)
    assert runtime.node.stats.bad_frames >= 200
    conn.close()


def test_oversized_frame_closes_only_that_connection(runtime: Runtime) -> None:
    victim, bystander = authed(runtime), authed(runtime)
    with contextlib.suppress(ConnectionError):  # the node may hang up mid-frame
        victim.send_bytes(b"\x00" * (wire.MAX_FRAME + 1))
    assert victim.poll(5)
    with pytest.raises((EOFError, ConnectionError)):
        victim.recv_bytes()
    still_serves(bystander)
    assert runtime.node.stats.closed_oversized == 1
    bystander.close()


def test_a_well_behaved_worker_sees_no_error_during_the_fuzzing(
    runtime: Runtime, tmp_path: Path
) -> None:
    pool = runtime.pool("slots")
    runtime.spawn_workers(
        targets.pairs, 1, args=("slots", 3000, str(tmp_path)), restart="transient"
    )
    rng = random.Random(11)
    while pool.stats().released < 3000:
        conn = authed(runtime)
        for _ in range(20):
            conn.send_bytes(rng.randbytes(rng.randrange(1, 256)))
            error_of(conn)
        if rng.random() < 0.3:
            with contextlib.suppress(ConnectionError):
                conn.send_bytes(b"\x01" * (wire.MAX_FRAME + 10))
        conn.close()
        with pytest.raises(AuthenticationError):
            open_connection(runtime.node.address, b"wrong", "fuzzer")
    assert wait_until(lambda: any(e.kind == "removed" for e in runtime.events()), timeout=30)
    assert not any(e.kind == "failed" for e in runtime.events())
    assert pool.stats().leased == 0


def test_pushes_to_a_worker_that_stopped_reading_never_block_the_node(runtime: Runtime) -> None:
    conn = authed(runtime, "fuzz")  # says HELLO as worker "fuzz", then never reads again
    node = runtime.node
    began = time.monotonic()
    sent = 0
    while node._peers["fuzz"].dropped_pushes == 0 and time.monotonic() - began < 20:
        assert node.push("fuzz", GiveBack("slots"))
        sent += 1
    assert node._peers["fuzz"].dropped_pushes == 1, f"{sent} pushes all went through"
    assert time.monotonic() - began < 20  # it never blocked
    conn.close()
