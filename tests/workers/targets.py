"""Worker targets for the cross-process tests: module-level, so spawn can import them."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import lessor
from lessor import DoubleRelease
from tests.support.overlap import IntervalLog, Markers, ParksAndReleases, hold


def pairs(
    pool: str,
    n: int,
    log_dir: str,
    cache: bool = False,
    marker_dir: str | None = None,
    mutant: bool = False,
) -> None:
    """Do n Acquire/Release pairs, each holding its resource a random 0-200 µs.

    Each hold is marked for the overlap checker (in ``marker_dir``, if given) and
    logged to a per-worker file as ``resource began ended lease_id``. Uncached unless
    asked: every pair is a round trip to the pool. ``mutant`` borrows through a
    handle broken on purpose (:class:`ParksAndReleases`), for the checker's own tests.
    """
    client = lessor.connect()
    slots = client.pool(pool, cache=cache)
    if mutant:
        slots = ParksAndReleases(client.pool(pool, cache=False))
    markers = Markers(marker_dir) if marker_dir else None
    path = os.path.join(log_dir, f"{os.getpid()}.log")
    with open(path, "a") as log:
        for _ in range(n):
            lease = slots.acquire(timeout=30)
            began = time.monotonic()
            if markers is None:
                hold()
            else:
                with markers.holding(lease.resource, since=lease.granted_at):
                    pass
            ended = time.monotonic()
            slots.release(lease)
            log.write(f"{lease.resource} {began!r} {ended!r} {lease.id}\n")


def hold_forever(pool: str, count: int, ready_dir: str) -> None:
    """Take ``count`` leases, say so in a file named after the pid, and block."""
    client = lessor.connect()
    leases = [client.pool(pool).acquire(timeout=30) for _ in range(count)]
    with open(os.path.join(ready_dir, str(os.getpid())), "w") as out:
        out.write(" ".join(lease.id for lease in leases))
    while True:
        time.sleep(3600)


def ignore_drain(ready_dir: str) -> None:
    """Ignore Drain and SIGTERM: only SIGKILL ends this one."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lessor.connect()
    with open(os.path.join(ready_dir, str(os.getpid())), "w") as out:
        out.write("ready")
    while True:
        time.sleep(3600)


def obey_drain(pool: str, ready_dir: str) -> None:
    """Hold a lease until told to drain, then release it and exit."""
    client = lessor.connect()
    slots = client.pool(pool)
    with slots.lease(timeout=30):
        with open(os.path.join(ready_dir, str(os.getpid())), "w") as out:
            out.write("ready")
        client.draining.wait(60)


def fail(code: int) -> None:
    lessor.connect()
    raise SystemExit(code)


def square(x: Any) -> Any:
    if x == 13:
        raise ValueError("unlucky")
    return x * x


def ask_remote(pool: str, out_dir: str) -> None:
    """Try a remote Acquire on a pool whose resources cannot cross; record the error."""
    client = lessor.connect()
    try:
        client.pool(pool).acquire(timeout=5)
        outcome = "granted"
    except lessor.LessorError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    with open(os.path.join(out_dir, str(os.getpid())), "w") as out:
        out.write(outcome)


def threads_share_one_client(pool: str, out_dir: str, cache: bool = False) -> None:
    """A waiting Acquire must not hold up another thread's Release; 8 threads share one link.

    With ``cache``, the Release must go to the pool too: a thread of this process waits.
    """
    import threading

    client = lessor.connect()
    slots = client.pool(pool, cache=cache)
    first = slots.acquire(timeout=10)  # max_size=1: the next Acquire has to wait
    got: list[lessor.Lease] = []

    def wait_then_release() -> None:
        lease = slots.acquire(timeout=10)
        got.append(lease)
        slots.release(lease)  # a lease is released by the thread that holds it

    waiter = threading.Thread(target=wait_then_release)
    waiter.start()
    while slots.stats().waiting < 1:
        time.sleep(0.001)
    slots.release(first)  # sent while the other thread's Acquire is pending
    waiter.join()
    errors: list[BaseException] = []
    ids: set[str] = {first.id, got[0].id}
    intervals = IntervalLog()

    def hammer() -> None:
        try:
            for _ in range(300):
                lease = slots.acquire(timeout=30)
                with intervals.holding(lease.resource):
                    ids.add(lease.id)
                slots.release(lease)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(os.path.join(out_dir, str(os.getpid())), "w") as out:
        out.write(
            f"{got[0].resource == first.resource} {len(errors)} {slots.stats().acquired} "
            f"{len(ids)} {intervals.count} {intervals.overlaps()}"
        )


def cached_pairs(
    pool: str, n: int, log_dir: str, hold_s: float | None = None, marker_dir: str | None = None
) -> None:
    """Like ``pairs``, through a caching handle: parked leases are reused locally.

    Each hold lasts ``hold_s`` (the work done with the resource), or a random 0-200 µs.
    """
    client = lessor.connect()
    slots = client.pool(pool, cache=True)
    markers = Markers(marker_dir) if marker_dir else None
    path = os.path.join(log_dir, f"{os.getpid()}.log")
    with open(path, "a") as log:
        for _ in range(n):
            lease = slots.acquire(timeout=30)
            began = time.monotonic()
            if markers is None:
                hold(hold_s)
            else:
                with markers.holding(lease.resource, since=lease.granted_at, seconds=hold_s):
                    pass
            ended = time.monotonic()
            slots.release(lease)
            log.write(f"{lease.resource} {began!r} {ended!r} {lease.id}\n")


def pg_hammer(pool: str, n: int, out_dir: str, start_dir: str = "", workers: int = 0) -> None:
    """Run queries through this worker's own pool of connections (process scope).

    With ``start_dir``, first wait (up to 60 s) until ``workers`` workers have said they
    are ready there, so that they hammer at once rather than one after another."""
    db = lessor.connect().pool(pool)
    if start_dir:
        open(os.path.join(start_dir, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(start_dir)) < workers and time.monotonic() < deadline:
            time.sleep(0.01)
    for _ in range(n):
        with db.lease(timeout=60) as conn:
            conn.execute("SELECT pg_sleep(0.002)")
            conn.commit()
    with open(os.path.join(out_dir, str(os.getpid())), "w") as out:
        out.write("done")


def pg_hold(pool: str, count: int, ready_dir: str) -> None:
    """Hold ``count`` connections of this worker's pool and block (to be SIGKILLed)."""
    db = lessor.connect().pool(pool)
    leases = [db.acquire(timeout=60) for _ in range(count)]
    with open(os.path.join(ready_dir, str(os.getpid())), "w") as out:
        out.write(" ".join(str(lease.resource.info.backend_pid) for lease in leases))
    while True:
        time.sleep(3600)


def pg_warm_then_idle(pool: str, count: int, ready_dir: str) -> None:
    """Open ``count`` connections, give them back (idle, holding quota), then idle on."""
    db = lessor.connect().pool(pool)
    leases = [db.acquire(timeout=60) for _ in range(count)]
    for lease in leases:
        db.release(lease)
    with open(os.path.join(ready_dir, str(os.getpid())), "w") as out:
        out.write("idle")
    while True:
        time.sleep(3600)


def lease_misuse(pool: str, out_dir: str) -> None:
    """Release twice through a caching handle: parked, then reused by another borrow."""
    slots = lessor.connect().pool(pool)
    outcomes = []
    first = slots.acquire(timeout=30)
    slots.release(first)  # parked here
    try:
        slots.release(first)  # again: the pool never saw the first
    except DoubleRelease:
        outcomes.append("double")
    again = slots.acquire(timeout=30)  # the parked lease, reused: a new borrow
    outcomes.append("reused" if again.id == first.id and again != first else "fresh")
    try:
        slots.release(first)  # the stale first borrow must not free the second one
    except DoubleRelease:
        outcomes.append("stale")
    try:
        slots.renew(first, ttl=60)  # nor move the second one's expiry
    except DoubleRelease:
        outcomes.append("stale-renew")
    renewed = slots.renew(again, ttl=60)
    outcomes.append("renewed" if renewed.granted_at == again.granted_at else "other")
    slots.release(again)  # the copy from before the renewal: accepted, and not parked
    timed = slots.acquire(timeout=30, ttl=60)  # has an expiry: never parked
    slots.release(timed)
    outcomes.append(f"parked={slots.parked}")  # type: ignore[attr-defined]
    with open(os.path.join(out_dir, str(os.getpid())), "w") as out:
        out.write(" ".join(outcomes))


def park_one_and_idle(pool: str, ready_dir: str) -> None:
    """Park one lease in this worker, say so, then send nothing until Drain."""
    client = lessor.connect()
    slots = client.pool(pool)
    slots.release(slots.acquire(timeout=30))
    with open(os.path.join(ready_dir, str(os.getpid())), "w") as out:
        out.write(str(slots.parked))  # type: ignore[attr-defined]
    client.draining.wait()


def actors_use_the_client(pool: str, n: int, out_dir: str) -> None:
    """Two pykka actors in this worker borrow through the process's one client."""
    import pykka

    class Borrower(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            slots = lessor.connect().pool(pool)
            resources = set()
            for _ in range(message):
                with slots.lease(timeout=30) as slot:
                    resources.add(slot)
            return sorted(resources)

    refs = [Borrower.start() for _ in range(2)]
    try:
        futures = [ref.ask(n, block=False) for ref in refs]
        seen = sorted({r for future in futures for r in future.get(timeout=60)})
    finally:
        for ref in refs:
            ref.stop()
    with open(os.path.join(out_dir, str(os.getpid())), "w") as out:
        out.write(" ".join(seen))


def pg_through_restart(pool: str, gate: str, count: int, out_dir: str) -> None:
    """Warm ``count`` connections, wait at the gate (the server restarts), then query."""
    client = lessor.connect()
    db = client.pool(pool)
    leases = [db.acquire(timeout=60) for _ in range(count)]
    for lease in leases:
        db.release(lease)  # idle now: they die with the server
    with open(os.path.join(out_dir, "warm"), "w") as out:
        out.write(str(os.getpid()))
    opened = client.pool(gate, cache=False).acquire(timeout=60)  # the test holds it meanwhile
    answers = []
    for _ in range(5):
        with db.lease(timeout=60) as conn:
            row = conn.execute("SELECT 1").fetchone()
            answers.append(str(row[0]) if row else "-")
    client.pool(gate, cache=False).release(opened)
    with open(os.path.join(out_dir, "answers"), "w") as out:
        out.write(" ".join(answers))


def thread_dies_holding(pool: str, cache: bool, out_dir: str) -> None:
    """A thread of this worker ends holding the only lease; the main thread then asks."""
    import threading

    slots = lessor.connect().pool(pool, cache=cache)
    taken = threading.Thread(target=slots.acquire, kwargs={"timeout": 30})
    taken.start()
    taken.join()
    began = time.monotonic()
    lease = slots.acquire(timeout=10)  # max_size=1: only the dead thread's lease can serve
    waited = time.monotonic() - began
    slots.release(lease)
    with open(os.path.join(out_dir, str(os.getpid())), "w") as out:
        out.write(f"{waited:.3f}")


def lease_expires_in_worker(pool: str, out_dir: str) -> None:
    """Hold a lease past its ttl: the pool pushes LeaseExpired and takes it back."""
    import threading

    client = lessor.connect()
    expired: list[str] = []
    noticed = threading.Event()

    def on_push(message: Any) -> None:
        if isinstance(message, lessor.LeaseExpired):
            expired.append(message.lease_id)
            noticed.set()

    client.on_push(on_push)
    slots = client.pool(pool)
    lease = slots.acquire(timeout=10, ttl=0.2)
    told = noticed.wait(10)
    again = slots.acquire(timeout=10)  # max_size=1: served only because it was reclaimed
    slots.release(again)
    with open(os.path.join(out_dir, str(os.getpid())), "w") as out:
        out.write(f"{told} {expired == [lease.id]} {again.id != lease.id}")


def big_result(size: int) -> bytes:
    """A map function whose result is too big for one frame."""
    return b"x" * size
