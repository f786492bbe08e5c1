"""The independent overlap checker behind every no-double-grant test.

Two checks that know nothing of how a pool works:

* :class:`Markers`, for holders in any process: holding a resource means owning
  the file ``<dir>/<resource>.held``. It is created exclusively (``os.link`` of a
  file naming its owner: ``O_CREAT|O_EXCL`` semantics, but the marker is born with
  its owner written in it, so a holder SIGKILLed a microsecond after taking it is
  still known by pid) and unlinked before the lease goes back. Finding the marker
  already there while its owner lives is an overlap: recorded in
  ``<dir>/overlaps.log`` (one ``O_APPEND`` line), never raised inside the holder, so
  the run completes and the test counts them. A marker left by a holder that died
  (SIGKILL) is taken over and recorded in ``<dir>/stale.log``; :meth:`Markers.overlaps`
  counts either as an overlap unless the test says the owner was SIGKILLed before the
  new holder's lease was granted (:meth:`Markers.overlaps` ``killed``).
* :class:`IntervalLog` and :func:`overlapping`, for threads of one process:
  each hold records its (began, ended) interval on ``time.monotonic``; afterwards
  no two intervals of one resource may intersect.

Either check sees a double grant only if both holders hold at the same time, so a
hold lasts a random, non-zero time (:func:`hold`): with two back-to-back
``monotonic()`` calls the intervals are a few hundred nanoseconds long and a pool
that hands one resource to two holders is rarely caught.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

from lessor import LeaseError, TokenFactory
from lessor.handles.ops import LeaseOps
from lessor.protocol.messages import Lease, Message

__all__ = [
    "HOLD_MAX",
    "DuplicateTokens",
    "IntervalLog",
    "Markers",
    "Outcome",
    "ParksAndReleases",
    "assert_exclusive",
    "hammer_with_checks",
    "hold",
    "overlapping",
    "peak",
    "sigint_held_back",
]

#: A hold lasts between HOLD_MIN and HOLD_MAX seconds (0-200 µs, never zero).
HOLD_MIN, HOLD_MAX = 1e-6, 200e-6


def hold(seconds: float | None = None, rng: random.Random | None = None) -> float:
    """Keep the resource for a random non-zero time; returns how long was asked.

    ``time.sleep`` rather than a busy-wait: a thread spinning in Python keeps the GIL,
    so no other thread of its process (the pool's, a rival holder's) could run
    meanwhile and an in-process overlap could not happen while it is being looked for.
    """
    if seconds is None:
        seconds = (rng or random).uniform(HOLD_MIN, HOLD_MAX)
    if seconds:  # 0: no hold at all, as the old checks did (for measuring them)
        time.sleep(seconds)
    return seconds


# -- in-process: hold intervals ---------------------------------------------------------

Holds = Mapping[Any, Sequence[tuple[float, float]]]


def overlapping(holds: Holds) -> list[tuple[Hashable, tuple[float, float], tuple[float, float]]]:
    """Every pair of consecutive intervals of one resource that intersect."""
    found = []
    for resource, intervals in holds.items():
        for a, b in itertools.pairwise(sorted(intervals)):
            if b[0] < a[1]:
                found.append((resource, a, b))
    return found


def peak(holds: Holds) -> int:
    """The most resources held at one time (at a tie, a release counts first)."""
    events = [(t, d) for ivs in holds.values() for b, e in ivs for t, d in ((b, 1), (e, -1))]
    live = top = 0
    for _, delta in sorted(events):
        live += delta
        top = max(top, live)
    return top


def assert_exclusive(holds: Holds, limit: int) -> None:
    """No resource held twice at once, and never more than ``limit`` held in all.

    ``holds`` maps each resource to the (began, ended) intervals its holders recorded
    while they held it, on a clock shared by every holder (``time.monotonic``).
    """
    clashes = overlapping(holds)
    assert not clashes, f"{len(clashes)} overlaps, first: {clashes[0]!r}"
    top = peak(holds)
    assert top <= limit, f"{top} resources held at once, more than {limit}"


class IntervalLog:
    """Hold intervals recorded by the threads of one process."""

    def __init__(self) -> None:
        self.holds: dict[Hashable, list[tuple[float, float]]] = defaultdict(list)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def holding(self, resource: Hashable, seconds: float | None = None) -> Iterator[None]:
        """Record the block and a random non-zero hold after it as one interval."""
        began = time.monotonic()
        try:
            yield
            hold(seconds)
        finally:
            self.record(resource, began, time.monotonic())

    def record(self, resource: Hashable, began: float, ended: float) -> None:
        with self._lock:
            self.holds[resource].append((began, ended))

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.holds.values())

    def overlaps(self) -> int:
        return len(overlapping(self.holds))


# -- any process: exclusive marker files ------------------------------------------------


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def sigint_held_back() -> Iterator[None]:
    """Delay a SIGINT that arrives inside the block until it ends (main thread only).

    The checker's own bookkeeping must be atomic: a KeyboardInterrupt between taking a
    marker and dropping it would leave the marker behind while its owner, still alive,
    unwinds and exits (tens of ms), and every holder after it would record an overlap
    that never happened. Held back, the interrupt lands just after the marker is gone,
    still inside the holder's lease block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if pending:  # now deliver it as it would have been
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous != signal.SIG_IGN:
                os.kill(os.getpid(), signal.SIGINT)


class Markers:
    """Exclusive per-resource marker files in ``directory``, shared by every process.

    Build one in the test and one in each worker from the same path. Use
    ``with markers.holding(resource, since=lease.granted_at):`` inside the lease block
    (so the marker is gone before the lease goes back); ``since`` is when the pool
    first granted that lease, for judging markers of killed holders.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._owners = threading.local()
        self._aside = itertools.count()

    def _marker(self, resource: object) -> str:
        return os.path.join(self.dir, quote(str(resource), safe="") + ".held")

    def _owner_file(self) -> tuple[str, str]:
        """This thread's owner file (hard-linked as the marker) and what it says."""
        owner = getattr(self._owners, "file", None)
        if owner is None or owner[0] != os.getpid():  # a forked child is a new owner
            who = f"{os.getpid()} {threading.get_ident()}"
            path = os.path.join(self.dir, f".owner-{os.getpid()}-{threading.get_ident()}")
            with open(path, "w") as out:
                out.write(who)
            owner = self._owners.file = (os.getpid(), path, who)
        return owner[1], owner[2]

    def _record(self, log: str, line: str) -> None:
        fd = os.open(self.dir / log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (line + "\n").encode())  # one write under PIPE_BUF: atomic
        finally:
            os.close(fd)

    def mark(self, resource: object, since: float | None = None) -> bool:
        """Take the marker; False (and an overlap recorded) if a live holder has it."""
        path = self._marker(resource)
        owner_path, me = self._owner_file()
        since = time.monotonic() if since is None else since
        while True:
            try:
                os.link(owner_path, path)
                return True
            except FileExistsError:
                pass
            try:
                other = Path(path).read_text()
            except FileNotFoundError:  # its holder just let go: try again
                continue
            if _alive(int(other.split()[0])):
                self._record("overlaps.log", f"{resource!r}\t{me}\tfound\t{other}\t{since!r}")
                return False
            # Left by a holder that died holding it: take it over, then judge later.
            aside = os.path.join(self.dir, f".aside-{os.getpid()}-{next(self._aside)}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            moved = Path(aside).read_text()
            os.unlink(aside)
            if _alive(int(moved.split()[0])):  # a live holder's marker, taken meanwhile
                self._record("overlaps.log", f"{resource!r}\t{me}\tdisplaced\t{moved}\t{since!r}")
            else:
                self._record("stale.log", f"{resource!r}\t{me}\t{moved}\t{since!r}")

    def unmark(self, resource: object) -> None:
        """Give the marker up (only if this thread owns it: after an overlap it may not)."""
        path = self._marker(resource)
        _, me = self._owner_file()
        with contextlib.suppress(FileNotFoundError):
            if Path(path).read_text() == me:
                os.unlink(path)

    @contextlib.contextmanager
    def holding(
        self, resource: object, since: float | None = None, seconds: float | None = None
    ) -> Iterator[None]:
        """Mark, hold a random non-zero time after the block's own work, unmark.

        In a main thread, Ctrl-C waits until the marker is dropped (see :func:`sigint_held_back`).
        """
        with sigint_held_back():
            owned = self.mark(resource, since)
            try:
                yield
                hold(seconds)
            finally:
                if owned:
                    self.unmark(resource)

    def _lines(self, log: str) -> list[list[str]]:
        try:
            text = (self.dir / log).read_text()
        except FileNotFoundError:
            return []
        return [line.split("\t") for line in text.splitlines()]

    def overlaps(self, killed: Mapping[int, float] | None = None) -> list[str]:
        """Every overlap seen so far, from any process.

        ``killed`` maps the pids the test SIGKILLed to ``time.monotonic()`` taken just
        before the signal. A marker of a killed holder found by a holder whose lease
        was granted after the kill is no overlap: the dead one's lease was reclaimed
        (its socket closes before its process is reaped, so it may still look alive).
        Any other marker found in place, or taken over from a dead holder, is one.
        """
        killed = killed or {}

        def after_its_kill(owner: str, since: str) -> bool:
            at = killed.get(int(owner.split(maxsplit=1)[0]))
            return at is not None and float(since) >= at

        found = [
            "\t".join(line)
            for line in self._lines("overlaps.log")
            if not after_its_kill(line[3], line[4])
        ]
        for resource, me, dead, since in self._lines("stale.log"):
            if not after_its_kill(dead, since):
                found.append(f"{resource}\t{me}\tstale marker of {dead}\t{since}")
        return found

    def stale(self) -> int:
        """How many markers were taken over from holders that died holding them."""
        return len(self._lines("stale.log"))

    def held(self) -> list[str]:
        """Markers present now (after a run with no deaths: none)."""
        return sorted(p.name for p in self.dir.glob("*.held"))

    def owners(self) -> dict[str, str]:
        """Markers present now and who holds each ("pid thread")."""
        found = {}
        for path in self.dir.glob("*.held"):
            with contextlib.suppress(FileNotFoundError):
                found[path.name] = path.read_text()
        return found


# -- mutants: pools and handles broken on purpose, to prove the checks catch them -------


class DuplicateTokens(TokenFactory):
    """Broken on purpose: the second resource it makes is token 0 again.

    With ``max_size=3`` the pool has slots holding 0, 0 and 1: two holders of 0 at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._made = itertools.count(1)

    def create(self) -> Any:
        if next(self._made) == 2:
            return 0
        return super().create()


class ParksAndReleases(LeaseOps):
    """Broken on purpose: a caching handle that never really lets go.

    A release parks the lease here for the next ``acquire`` and *also* gives it back
    to the pool (a recall that never takes effect locally: released twice, once to
    the pool and once into the cache). Its next acquire reuses a resource the pool
    may have granted to someone else meanwhile.
    """

    def __init__(self, inner: LeaseOps) -> None:
        self.inner = inner
        self.name = inner.name
        self.parked: list[Lease] = []

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        return self.inner.ask(message, timeout)

    def tell(self, message: Message) -> None:
        self.inner.tell(message)

    def acquire(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Lease:
        if self.parked:
            return self.parked.pop()
        return self.inner.acquire(timeout, priority, ttl)

    def release(self, lease: Lease, broken: bool = False) -> None:
        self.parked.append(lease)
        with contextlib.suppress(LeaseError):  # the second time round the pool says so
            self.inner.release(lease, broken)


# -- a hammer for in-process pools --------------------------------------------------------


@dataclass
class Outcome:
    errors: list[BaseException]
    markers: list[str]  # overlaps the marker files saw
    intervals: IntervalLog  # every hold's interval, to check afterwards


def hammer_with_checks(
    handle: LeaseOps | Callable[[], LeaseOps],
    markers: Markers | None,
    threads: int = 16,
    pairs: int = 150,
    seconds: float | None = None,
) -> Outcome:
    """``threads`` threads each borrow ``pairs`` times and hold for ``seconds`` (random).

    ``handle`` is shared, or made per thread when given as a callable. Each hold is
    recorded as an interval and, with ``markers``, marked. ``seconds=0`` with no
    markers is the old check: two back-to-back ``monotonic()`` calls.
    """
    intervals = IntervalLog()
    errors: list[BaseException] = []

    def run() -> None:
        ops = handle if isinstance(handle, LeaseOps) else handle()
        try:
            for _ in range(pairs):
                lease = ops.acquire(timeout=10)
                began = time.monotonic()
                owned = markers is not None and markers.mark(lease.resource, lease.granted_at)
                hold(seconds)
                if owned and markers is not None:
                    markers.unmark(lease.resource)
                intervals.record(lease.resource, began, time.monotonic())
                ops.release(lease)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, name=f"hammer-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert not any(t.is_alive() for t in workers), "a hammer thread is stuck"
    return Outcome(errors, [] if markers is None else markers.overlaps(), intervals)
