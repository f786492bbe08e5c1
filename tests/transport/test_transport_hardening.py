"""The worker transport under stress: reply races, impostors, stalled handshakes, bad fields.

Each test drives a real Node over its real Unix socket, from real clients or from raw
connections that speak the protocol by hand; targets are tiny fakes that record what
the node hands them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import queue
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import AuthenticationError
from multiprocessing import connection as mpc
from typing import Any

import msgpack
import pytest

from lessor.errors import AcquireTimeout, ActorStopped, LessorError, ProtocolError
from lessor.protocol import messages, wire
from lessor.protocol.messages import Acquire, ErrorReply, GetStats, Hello, Lease, Message, Release
from lessor.protocol.wire import Kind
from lessor.transport.node import ENV_ADDRESS, ENV_AUTHKEY, Node
from lessor.worker.client import Client
from tests.support.helpers import in_thread, wait_until

WAIT = 5.0  # seconds any event below may take before the test gives up on it


class FakePool:
    """A Target that records every delivery; Acquires wait until the test answers them."""

    def __init__(self, name: str = "p", acquire_timeout: float = 30.0) -> None:
        self.name = name
        self.acquire_timeout = acquire_timeout
        self.asks: queue.Queue[tuple[Message, Any, str]] = queue.Queue()
        self.tells: queue.Queue[tuple[Message, str]] = queue.Queue()
        self.cancels: queue.Queue[tuple[Any, bool, str]] = queue.Queue()
        self.describes = 0
        self.gate = threading.Event()  # a cleared gate holds the node's reader in a TELL
        self.gate.set()
        self.on_cancel: Callable[[Any], None] | None = None

    def deliver(self, message: Message, reply: Any, holder: str) -> None:
        if reply is None:
            assert self.gate.wait(WAIT)
            self.tells.put((message, holder))
        elif isinstance(message, GetStats):
            reply.set(None)
        elif type(message).__name__ == "Describe":
            self.describes += 1
            reply.set(messages.PoolInfo(self.name, self.acquire_timeout, 3))  # type: ignore[attr-defined]
        else:
            self.asks.put((message, reply, holder))

    def cancel(self, reply: Any, holder: str) -> None:
        if self.on_cancel is not None:
            self.on_cancel(reply)
        self.cancels.put((reply, reply.cancel(), holder))

    def lease(self, holder: str, resource: Any = "token") -> Lease:
        return Lease(f"{self.name}/1/{time.monotonic_ns()}", self.name, resource, str(holder),
                     time.monotonic(), None)  # fmt: skip


@pytest.fixture
def node() -> Iterator[Node]:
    made = Node()
    yield made
    made.close()


@pytest.fixture
def fake(node: Node) -> FakePool:
    pool = FakePool()
    node.register("p", pool)
    return pool


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def connect(node: Node, worker_id: str, made: list[Client], key: bytes | None = None) -> Client:
    """A Client as a worker process makes it, from the environment ``node.env`` gives."""
    env = node.env(worker_id)
    client = Client(env[ENV_ADDRESS], key or bytes.fromhex(env[ENV_AUTHKEY]), worker_id)
    client.on_lost = lambda: None  # this is the test process: never SIGTERM it
    made.append(client)
    return client


def asked(
    node: Node, fake: FakePool, clients: list[Client], worker_id: str = "w", **ask: Any
) -> tuple[Client, threading.Thread, list[Any], Any, str]:
    """A worker's Acquire (``timeout`` 10 s) waiting in the fake pool: its client, thread,
    outcome list, reply and holder."""
    client = connect(node, worker_id, clients)
    timeout = ask.pop("acquire_timeout", 10.0)
    thread, out = in_thread(lambda: client.ask("p", Acquire("p", timeout), **ask))
    _, reply, holder = fake.asks.get(timeout=WAIT)
    return client, thread, out, reply, holder


def raw(node: Node, worker_id: str, key: bytes | None = None, pid: int = 1) -> mpc.Connection:
    """A connection that speaks the handshake by hand: HELLO first, then both challenges."""
    if key is None:
        key = bytes.fromhex(node.env(worker_id)[ENV_AUTHKEY])
    conn = mpc.Client(node.address, family="AF_UNIX")
    conn.send_bytes(wire.frame(Kind.HELLO, 0, "", Hello(wire.PROTOCOL_VERSION, worker_id, pid)))
    mpc.answer_challenge(conn, key)
    mpc.deliver_challenge(conn, key)
    assert conn.poll(WAIT)
    kind, _, _, answer = wire.parse(conn.recv_bytes())
    if kind != Kind.HELLO:
        conn.close()
        assert isinstance(answer, ErrorReply)
        raise ProtocolError(answer.text)
    return conn


# -- 1. the reply contract ---------------------------------------------------------------


def test_a_reply_to_a_worker_that_hung_up_is_refused_and_never_calls_back(
    node: Node, fake: FakePool, clients: list[Client]
) -> None:
    client, thread, out, reply, holder = asked(node, fake, clients)
    client.close()
    thread.join(WAIT)
    assert isinstance(out[0], ActorStopped)
    assert wait_until(lambda: "w" not in node._peers)
    assert reply.set(fake.lease(holder)) is False  # not taken: the pool keeps its lease
    assert fake.tells.empty()  # and the reply never delivered a Release to the pool itself
    assert reply.set_exception((LessorError, LessorError("late"), None)) is False


def test_set_set_exception_and_cancel_claim_a_reply_once(
    node: Node, fake: FakePool, clients: list[Client]
) -> None:
    client, thread, out, reply, holder = asked(node, fake, clients)
    lease = fake.lease(holder)
    assert reply.set(lease) is True
    thread.join(WAIT)
    assert out == [lease]
    assert reply.set(lease) is False  # a second answer is refused, never queue.Full
    assert reply.set_exception((LessorError, LessorError("x"), None)) is False
    assert reply.cancel() is False  # the answer went: what it was stays readable
    assert reply.value == lease

    thread, out = in_thread(lambda: client.ask("p", Acquire("p", 30.0)))
    _, reply, holder = fake.asks.get(timeout=WAIT)
    assert reply.cancel() is True  # (the runtime's own idea: the worker hears of it at once)
    assert reply.set(fake.lease(holder)) is False
    assert reply.set_exception((LessorError, LessorError("x"), None)) is False
    thread.join(WAIT)
    assert isinstance(out[0], LessorError) and "cancelled" in str(out[0])


def test_an_answer_that_cannot_be_encoded_fails_that_request_at_once(
    node: Node, fake: FakePool, clients: list[Client]
) -> None:
    _, thread, out, reply, holder = asked(node, fake, clients, acquire_timeout=30.0)
    began = time.monotonic()
    assert reply.set(fake.lease(holder, resource=object())) is False  # the pool keeps it
    thread.join(WAIT)
    assert isinstance(out[0], ProtocolError) and "cannot encode" in str(out[0])
    assert time.monotonic() - began < 2


def test_a_grant_that_loses_to_the_cancel_goes_back_through_the_target_only(
    node: Node, fake: FakePool, clients: list[Client]
) -> None:
    taken: list[bool] = []

    def grant_just_now(reply: Any) -> None:  # the pool grants as the CANCEL arrives
        _, pending, holder = fake.asks.get(timeout=WAIT)
        assert pending is reply
        taken.append(reply.set(fake.lease(holder)))

    fake.on_cancel = grant_just_now
    client = connect(node, "w", clients)
    with pytest.raises(AcquireTimeout):
        client.ask("p", Acquire("p", 10.0), timeout=0.2)
    reply, cancelled, _ = fake.cancels.get(timeout=WAIT)
    assert taken == [True] and cancelled is False  # the target releases reply.value
    assert isinstance(reply.value, Lease)
    assert client.ask("p", GetStats()) is None  # a round trip: the worker sent nothing back
    assert fake.tells.empty()


def test_a_late_grant_the_worker_gave_up_on_is_given_back_by_the_worker(
    node: Node, fake: FakePool, clients: list[Client]
) -> None:
    client, thread, out, reply, holder = asked(node, fake, clients, timeout=0.3)
    fake.gate.clear()  # the node's reader now stalls in this TELL: the CANCEL waits behind it
    client.tell("p", Release("p/unrelated"))
    thread.join(WAIT)
    assert isinstance(out[0], AcquireTimeout)
    lease = fake.lease(holder)
    assert reply.set(lease) is True  # the node has not read the CANCEL yet: the grant goes out
    fake.gate.set()
    assert fake.tells.get(timeout=WAIT)[0] == Release("p/unrelated")
    assert fake.tells.get(timeout=WAIT) == (Release(lease.id), holder)
    assert fake.cancels.empty()


# -- 2. impostors ------------------------------------------------------------------------


def _key(node: Node, worker_id: str) -> bytes:
    return bytes.fromhex(node.env(worker_id)[ENV_AUTHKEY])


def test_one_workers_key_opens_no_other_identity(
    node: Node, fake: FakePool, clients: list[Client]
) -> None:
    key_a = _key(node, "A")
    node.env("B")
    assert key_a != node.authkey
    with pytest.raises((AuthenticationError, ProtocolError, EOFError)):
        connect(node, "B", clients, key=key_a)
    with pytest.raises((AuthenticationError, ProtocolError, EOFError)):
        raw(node, "B", key=key_a)
    # A worker id the node never made an environment for is refused, whatever the key.
    never = hmac.new(node.authkey, b"Z", hashlib.sha256).digest()
    with pytest.raises((AuthenticationError, ProtocolError, EOFError)):
        raw(node, "Z", key=never)
    assert node.stats.connections == 0


def test_a_second_connection_as_a_live_worker_is_refused(
    node: Node, fake: FakePool, clients: list[Client]
) -> None:
    client, thread, _, reply, holder = asked(node, fake, clients, "A")
    lease = fake.lease(holder)
    assert reply.set(lease)
    thread.join(WAIT)
    gone: list[str] = []
    from lessor import holder as holders

    holders.subscribe(gone.append)
    try:
        with pytest.raises(ProtocolError, match="already connected"):
            raw(node, "A")
        with pytest.raises(ProtocolError, match="already connected"):
            connect(node, "A", clients)
        assert client.ask("p", GetStats()) is None  # A's connection serves on
        assert node._peers["A"].holder == holder
        assert holder not in gone
    finally:
        holders.unsubscribe(gone.append)
    assert node.stats.connections == 1


def test_an_impostor_cannot_release_a_workers_lease(clients: list[Client]) -> None:
    from lessor import PoolSpec, Runtime, TokenFactory

    rt = Runtime(handle_signals=False)
    try:
        pool = rt.add_pool(PoolSpec("slots", TokenFactory(), max_size=1))
        victim = connect(rt.node, "A", clients)
        lease = victim.pool("slots", cache=False).acquire(5)
        key_a = _key(rt.node, "A")
        with pytest.raises((AuthenticationError, ProtocolError, EOFError)):
            raw(rt.node, "A", key=key_a, pid=os.getpid())  # same key, same pid: still refused
        stranger = raw(rt.node, "B")
        stranger.send_bytes(wire.frame(Kind.ASK, 5, "slots", Release(lease.id)))
        assert stranger.poll(WAIT)
        kind, corr, _, answer = wire.parse(stranger.recv_bytes())
        assert (kind, corr) == (Kind.ERROR, 5) and isinstance(answer, ErrorReply)
        assert answer.error == "ForeignLease"
        stranger.close()
        assert pool.stats().leased == 1
        victim.pool("slots", cache=False).release(lease)
        assert wait_until(lambda: pool.stats().leased == 0)
    finally:
        for client in clients:
            client.close()
        clients.clear()
        rt.shutdown(timeout=5)


def test_the_holder_id_uses_the_kernels_pid_and_a_bound_pid_must_match(
    node: Node, fake: FakePool
) -> None:
    conn = raw(node, "A", pid=1)  # HELLO claims pid 1: the kernel knows better
    assert node._peers["A"].holder == f"worker:A:{os.getpid()}"
    conn.close()
    node.env("C")
    node.bind_pid("C", os.getpid() + 1_000_000)  # C is some other process
    with pytest.raises((AuthenticationError, ProtocolError, EOFError)):
        raw(node, "C", pid=os.getpid() + 1_000_000)
    node.env("D")
    node.bind_pid("D", os.getpid())
    raw(node, "D").close()
    early = raw(node, "E")  # connected before its supervisor bound E's pid: on the key alone
    node.bind_pid("E", os.getpid() + 1_000_000)  # ...and E turns out to be another process
    assert early.poll(WAIT)
    with pytest.raises(EOFError):
        early.recv_bytes()
    early.close()
    assert wait_until(lambda: "E" not in node._peers)


# -- 3. handshake deadline and close -------------------------------------------------


def test_close_hangs_up_every_connection_at_once(node: Node) -> None:
    silent = []
    for _ in range(4):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(node.address)
        silent.append(sock)
    partial = socket.socket(socket.AF_UNIX)
    partial.connect(node.address)
    partial.sendall(struct.pack("!i", 100) + b"0123456789")  # a tenth of a frame, then nothing
    try:
        assert wait_until(lambda: len(node._threads) == 5)
        began = time.monotonic()
        node.close()
        took = time.monotonic() - began
        assert took < 1.0, f"close took {took:.2f}s"
        assert not [t for t in threading.enumerate() if t.name.startswith("lessor-node")]
    finally:
        for sock in [*silent, partial]:
            sock.close()


def _hung_up_within(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    with contextlib.suppress(ConnectionError):
        while sock.recv(4096):
            pass
    return True


def test_a_silent_or_stalled_connection_is_dropped_at_the_handshake_deadline() -> None:
    node = Node(handshake_timeout=0.3)  # type: ignore[call-arg]
    try:
        silent = socket.socket(socket.AF_UNIX)
        silent.connect(node.address)
        partial = socket.socket(socket.AF_UNIX)
        partial.connect(node.address)
        partial.sendall(struct.pack("!i", 100) + b"01234")
        began = time.monotonic()
        for sock in (silent, partial):
            try:
                assert _hung_up_within(sock, WAIT)
            except TimeoutError:
                pytest.fail("the node never hung up")
            finally:
                sock.close()
        assert time.monotonic() - began < 2
        assert wait_until(lambda: node.stats.refused == 2 and not node._threads)
    finally:
        node.close()


# -- 4. badly typed fields ---------------------------------------------------------------


def test_a_frame_with_a_bad_field_is_answered_on_its_own_corr(node: Node, fake: FakePool) -> None:
    conn = raw(node, "w")
    try:
        for corr, priority in enumerate(["high", 1.5, None, True, 2**63], start=41):
            bad = [int(Kind.ASK), corr, "p", [Acquire.TAG, "p", None, priority, None]]
            conn.send_bytes(msgpack.packb(bad))
            assert conn.poll(WAIT)
            kind, got, _, answer = wire.parse(conn.recv_bytes())
            assert (kind, got) == (Kind.ERROR, corr) and isinstance(answer, ErrorReply)
            assert answer.error == "ProtocolError" and "priority" in answer.text
        assert fake.asks.empty()
    finally:
        conn.close()


@pytest.mark.parametrize("priority", ["high", 1.5, None, True, float("inf")])
def test_a_worker_cannot_even_make_an_acquire_with_a_bad_priority(priority: object) -> None:
    with pytest.raises(TypeError, match="priority"):
        Acquire("p", 1.0, priority)  # type: ignore[arg-type]


# -- 5. long timeouts and interrupted waits ----------------------------------------------


def test_a_very_long_timeout_waits_instead_of_overflowing(
    node: Node, fake: FakePool, clients: list[Client]
) -> None:
    client = connect(node, "w", clients)
    thread, out = in_thread(lambda: client.pool("p", cache=False).acquire(timeout=1e9))
    _, reply, holder = fake.asks.get(timeout=WAIT)
    lease = fake.lease(holder)
    reply.set(lease)
    thread.join(WAIT)
    assert out == [lease]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, Interrupted])
def test_an_interrupted_wait_cancels_its_request(
    node: Node, fake: FakePool, clients: list[Client], interruption: type[BaseException]
) -> None:
    client = connect(node, "w", clients)

    def interrupt(signum: int, frame: object) -> None:
        raise interruption

    def when_asked() -> None:
        fake.asks.put(fake.asks.get(timeout=WAIT))
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        helper = threading.Thread(target=when_asked)
        helper.start()
        with pytest.raises(interruption):
            client.ask("p", Acquire("p", 60.0))
        helper.join(WAIT)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    _, reply, _ = fake.asks.get(timeout=WAIT)
    cancelled, won, _ = fake.cancels.get(timeout=WAIT)
    assert cancelled is reply and won is True


# -- 6. a worker's Acquire waits as long as its pool does --------------------------------


def test_a_remote_acquire_waits_for_the_pools_own_timeout(
    node: Node, clients: list[Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lessor.handles import ops as leases

    monkeypatch.setattr(leases, "ACQUIRE_GRACE", 0.2, raising=False)
    slow = FakePool("slow", acquire_timeout=0.3)  # the pool never answers its Acquires
    node.register("slow", slow)
    client = connect(node, "w", clients)
    pool = client.pool("slow", cache=False)
    began = time.monotonic()
    thread, out = in_thread(pool.acquire)
    thread.join(WAIT)
    took = time.monotonic() - began
    assert out and isinstance(out[0], AcquireTimeout), out
    assert 0.5 <= took < 2.5, f"gave up after {took:.2f}s"
    with pytest.raises(AcquireTimeout):
        client.pool("slow").acquire()  # another handle of this process: no new Describe
    assert slow.describes == 1
    assert wait_until(lambda: slow.asks.qsize() == 2 and slow.cancels.qsize() == 2)


def test_pool_threads_may_push_to_one_worker_at_the_same_time() -> None:
    """Pushes come from whichever threads ran pool turns; a shared poll object once
    raised "concurrent poll() invocation" and the push was lost."""
    from lessor.protocol.messages import GiveBack
    from lessor.transport.peer import Peer

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer = Peer(mpc.Connection(ours.detach()), "w", os.getpid())
    peer.greet(b"hello")  # until the node's HELLO is out, every send waits
    reader = mpc.Connection(theirs.detach())
    received: list[bytes] = []
    errors: list[BaseException] = []

    def read() -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                received.append(reader.recv_bytes())

    def push() -> None:
        try:
            for _ in range(300):
                peer.tell(GiveBack("p"))
        except BaseException as exc:
            errors.append(exc)

    draining = threading.Thread(target=read)
    draining.start()
    pushers = [threading.Thread(target=push) for _ in range(6)]
    for t in pushers:
        t.start()
    for t in pushers:
        t.join(WAIT * 6)
    try:
        assert errors == []
        assert wait_until(lambda: len(received) + peer.dropped_pushes == 1801, timeout=WAIT)
        assert received[0] == b"hello" and len(received) > 1
    finally:
        peer.close()
        draining.join(WAIT)
        reader.close()


def test_a_drain_pushed_before_the_worker_connects_reaches_it(
    node: Node, clients: list[Client]
) -> None:
    """A shutdown that starts while a worker is still starting must still drain it."""
    from lessor.protocol.messages import Drain

    env = node.env("starting")
    assert node.push("starting", Drain(3.0)) is True  # known, not connected yet
    assert node.push("never-spawned", Drain(3.0)) is False
    client = Client(env[ENV_ADDRESS], bytes.fromhex(env[ENV_AUTHKEY]), "starting")
    client.on_lost = lambda: None
    clients.append(client)
    assert client.draining.wait(WAIT)
    assert client.drain_deadline_s == 3.0
