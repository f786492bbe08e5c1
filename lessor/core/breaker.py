"""BreakerCore: one circuit breaker's state machine, pure (time comes in as ``now``).

The states and settings follow Resilience4j's CircuitBreaker (closed, open,
half-open, plus the operator states forced-open and disabled; a count- or
time-based sliding window; failure-rate and slow-call-rate thresholds). What is
different is where calls happen: in many processes at once. So the core never
sees a call. Handles decide permission from the state the actor pushed them,
time and classify their own calls, and report *outcomes* in batches
(:meth:`BreakerCore.record`); only half-open probe permits are handed out here
(:meth:`BreakerCore.probe`), so across every process at most ``half_open_calls``
probes run at once, and a probe whose holder dies gives its permit back.

Every change of state bumps ``generation``. Outcomes are reported with the
generation the caller saw: a batch from an earlier closed period (it was still in
flight when the breaker opened) is counted in stats but never moves the state.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from lessor.errors import BreakerOpen

__all__ = [
    "FAILED",
    "IGNORED",
    "SLOW",
    "BreakerCore",
    "BreakerSettings",
    "Changed",
    "ProbeGranted",
    "ProbeRefused",
    "State",
    "outcome_code",
    "refusal",
]

State = Literal["closed", "open", "half_open", "forced_open", "disabled"]
STATES: tuple[State, ...] = ("closed", "open", "half_open", "forced_open", "disabled")

#: An outcome is one byte: bit 0 the call failed, bit 1 it was slow. IGNORED gives a
#: probe permit back without counting (an error the breaker ignores).
FAILED, SLOW, IGNORED = 1, 2, 4


def outcome_code(failed: bool, slow: bool) -> int:
    return (FAILED if failed else 0) | (SLOW if slow else 0)


def refusal(name: str, state: str, until: float | None, now: float) -> BreakerOpen:
    """The BreakerOpen a refused call raises, wherever it was refused."""
    remaining = None if until is None else max(0.0, until - now)
    if remaining is not None:
        why = f"open for {remaining:.3g}s more"
    elif state == "half_open":
        why = "half-open, every probe permit taken"
    else:
        why = state.replace("_", " ")
    return BreakerOpen(f"breaker {name!r} is {why}", name, remaining)


@dataclass(frozen=True)
class BreakerSettings:
    """The numbers the core decides by (a BreakerSpec's, without the error filters)."""

    window_type: Literal["count", "time"] = "count"
    window_size: int = 100
    minimum_calls: int = 100
    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    open_duration: float = 60.0
    open_duration_max: float | None = None
    open_jitter: float = 0.0
    half_open_calls: int = 10
    max_wait_in_half_open: float | None = None


@dataclass(frozen=True, slots=True)
class Changed:
    """The state changed: push it to every subscriber and tell the listeners."""

    state: State
    previous: State
    generation: int
    until: float | None  # when an open state ends (monotonic seconds)


@dataclass(frozen=True, slots=True)
class ProbeGranted:
    """Answer ``ticket``: it may make probe call ``probe`` in half-open ``generation``."""

    ticket: object
    probe: int
    generation: int


@dataclass(frozen=True, slots=True)
class ProbeRefused:
    """Answer ``ticket``: no probe now. ``until``: when the open state ends, if open."""

    ticket: object
    state: State
    until: float | None


Decision = Changed | ProbeGranted | ProbeRefused

#: A time-based window slides in steps of ``window_size / TIME_BUCKETS`` seconds.
TIME_BUCKETS = 20


#: Codes with the IGNORED bit: removed before counting (bytes.translate's delete set).
_IGNORED_CODES = bytes(c for c in range(8) if c & IGNORED)


def _failed_slow(codes: bytes) -> tuple[int, int]:
    """(failed, slow) among codes 0-3, counted in C: a batch may hold thousands."""
    both = codes.count(FAILED | SLOW)
    return codes.count(FAILED) + both, codes.count(SLOW) + both


class _Window:
    """Calls, failures and slow calls over the last ``size`` calls or seconds."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.by_time = settings.window_type == "time"
        self.size = settings.window_size
        self.width = settings.window_size / TIME_BUCKETS
        self.calls = self.failed = self.slow = 0
        # count: one entry per call (code); time: [bucket, calls, failed, slow] per step
        self._codes = bytearray()
        self._buckets: deque[list[int]] = deque()

    def add(self, now: float, codes: bytes) -> None:
        failed, slow = _failed_slow(codes)
        self.calls += len(codes)
        self.failed += failed
        self.slow += slow
        if self.by_time:
            step = math.floor(now / self.width)
            last = self._buckets[-1] if self._buckets else None
            if last is not None and last[0] == step:
                last[1] += len(codes)
                last[2] += failed
                last[3] += slow
            else:
                self._buckets.append([step, len(codes), failed, slow])
            self.expire(now)
            return
        window = self._codes
        window += codes
        excess = len(window) - self.size
        if excess > 0:
            gone = bytes(window[:excess])
            del window[:excess]
            failed, slow = _failed_slow(gone)
            self.calls -= excess
            self.failed -= failed
            self.slow -= slow

    def expire(self, now: float) -> None:
        if not self.by_time:
            return
        oldest = math.floor(now / self.width) - TIME_BUCKETS + 1
        while self._buckets and self._buckets[0][0] < oldest:
            _, calls, failed, slow = self._buckets.popleft()
            self.calls -= calls
            self.failed -= failed
            self.slow -= slow

    def clear(self) -> None:
        self.calls = self.failed = self.slow = 0
        self._codes.clear()
        self._buckets.clear()


@dataclass
class _Totals:
    """Counters since the breaker was made (they survive restarts of its actor)."""

    calls: int = 0
    failed: int = 0
    slow: int = 0
    rejected: int = 0
    ignored: int = 0
    stale: int = 0  # outcomes of an earlier generation: counted, never decisive
    trips: int = 0
    probes: int = 0


@dataclass
class _Probes:
    """The half-open period's permits: who holds which, and what came back."""

    out: dict[int, str] = field(default_factory=dict)  # probe id -> holder
    calls: int = 0
    failed: int = 0
    slow: int = 0


class BreakerCore:
    """One breaker. Methods take ``now`` (monotonic seconds) and return decisions.

    ``rng`` draws the open state's jitter (seeded in tests).
    """

    def __init__(
        self,
        settings: BreakerSettings,
        now: float,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._rng = rng
        self.state: State = "closed"
        self.generation = 1
        self.until: float | None = None  # end of the open state
        self.changed_at = now
        self.window = _Window(settings)
        self.totals = _Totals()
        self._consecutive_trips = 0  # opens since the breaker last closed (the backoff)
        self._probes = _Probes()
        self._next_probe = 1
        self._half_open_deadline: float | None = None

    # -- what handles report -------------------------------------------------------------

    def record(
        self, now: float, generation: int, codes: bytes, rejected: int = 0
    ) -> list[Decision]:
        """A batch of call outcomes (``codes``, one byte each) seen under ``generation``."""
        totals = self.totals
        totals.rejected += rejected
        counted = codes.translate(None, _IGNORED_CODES)
        failed, slow = _failed_slow(counted)
        totals.ignored += len(codes) - len(counted)
        totals.calls += len(counted)
        totals.failed += failed
        totals.slow += slow
        if generation != self.generation or self.state != "closed":
            totals.stale += len(counted)
            return self.tick(now)
        self.window.add(now, counted)
        if self._tripped(self.window.calls, self.window.failed, self.window.slow, closed=True):
            return [self._open(now)]
        return self.tick(now)

    def probe(self, now: float, ticket: object, holder: str) -> list[Decision]:
        """A handle in half-open asks to make one probe call."""
        out = self.tick(now)
        permits = self._probes
        if self.state == "half_open" and (
            len(permits.out) + permits.calls < self.settings.half_open_calls
        ):
            probe = self._next_probe
            self._next_probe += 1
            permits.out[probe] = holder
            self.totals.probes += 1
            out.append(ProbeGranted(ticket, probe, self.generation))
        else:
            if self.state not in ("closed", "disabled"):  # (else the caller goes ahead)
                self.totals.rejected += 1
            out.append(ProbeRefused(ticket, self.state, self.until))
        return out

    def probe_done(self, now: float, probe: int, code: int) -> list[Decision]:
        """A probe's outcome. Unknown probes (an earlier half-open period) are ignored."""
        out = self.tick(now)
        permits = self._probes
        if self.state != "half_open" or permits.out.pop(probe, None) is None:
            return out
        if code & IGNORED:
            self.totals.ignored += 1
            return out  # the permit is free again
        self.totals.calls += 1
        permits.calls += 1
        if code & FAILED:
            permits.failed += 1
            self.totals.failed += 1
        if code & SLOW:
            permits.slow += 1
            self.totals.slow += 1
        if permits.calls >= self.settings.half_open_calls:
            if self._tripped(permits.calls, permits.failed, permits.slow, closed=False):
                out.append(self._open(now))
            else:
                out.append(self._move(now, "closed"))
        return out

    def holder_gone(self, now: float, holder: str) -> list[Decision]:
        """A holder died: its probe permits are free again (its calls never reported)."""
        permits = self._probes
        for probe in [p for p, h in permits.out.items() if h == holder]:
            del permits.out[probe]
        return self.tick(now)

    # -- time and the operator ---------------------------------------------------------

    def tick(self, now: float) -> list[Decision]:
        """Open ends at ``until``; half-open gives up after ``max_wait_in_half_open``."""
        self.window.expire(now)
        if self.state == "open" and self.until is not None and now >= self.until:
            return [self._move(now, "half_open")]
        deadline = self._half_open_deadline
        if self.state == "half_open" and deadline is not None and now >= deadline:
            return [self._open(now)]
        return []

    def next_deadline(self) -> float | None:
        if self.state == "open":
            return self.until
        if self.state == "half_open":
            return self._half_open_deadline
        return None

    def force(self, now: float, state: State) -> list[Decision]:
        """The operator: ``forced_open``, ``disabled``, or ``closed`` (a reset)."""
        if state == "closed":
            self._consecutive_trips = 0
            return [self._move(now, "closed")]
        if state in ("forced_open", "disabled"):
            return [self._move(now, state)]
        raise ValueError(
            f"a breaker can be forced to closed, forced_open or disabled, not {state!r}"
        )

    def remaining(self, now: float) -> float | None:
        """Seconds left in the open state (None when not open or forced open)."""
        return None if self.until is None else max(0.0, self.until - now)

    # -- transitions ---------------------------------------------------------------------

    def _tripped(self, calls: int, failed: int, slow: int, *, closed: bool) -> bool:
        s = self.settings
        if closed:
            if calls < self._enough():
                return False
        elif calls == 0:
            return False
        return (
            failed * 100.0 >= s.failure_rate_threshold * calls
            or slow * 100.0 >= s.slow_call_rate_threshold * calls
        )

    def _enough(self) -> int:
        """Calls the closed state needs before it judges (a count window caps it)."""
        s = self.settings
        wanted = (
            min(s.minimum_calls, s.window_size) if s.window_type == "count" else s.minimum_calls
        )
        return max(1, wanted)

    def _open(self, now: float) -> Changed:
        s = self.settings
        duration = s.open_duration
        if s.open_duration_max is not None:
            doublings = min(self._consecutive_trips, 64)  # (2.0**1024 overflows)
            duration = min(s.open_duration * 2.0**doublings, s.open_duration_max)
        duration *= 1.0 + s.open_jitter * self._rng()
        self._consecutive_trips += 1
        self.totals.trips += 1
        return self._move(now, "open", until=now + duration)

    def _move(self, now: float, state: State, until: float | None = None) -> Changed:
        previous = self.state
        self.state = state
        self.until = until
        self.generation += 1
        self.changed_at = now
        self._probes = _Probes()
        self._half_open_deadline = None
        if state == "half_open" and self.settings.max_wait_in_half_open is not None:
            self._half_open_deadline = now + self.settings.max_wait_in_half_open
        if state == "closed":
            self._consecutive_trips = 0
        self.window.clear()  # each period judges its own calls (as Resilience4j's states do)
        return Changed(state, previous, self.generation, until)

    # -- what callers read -------------------------------------------------------------

    @property
    def probes_out(self) -> int:
        return len(self._probes.out)

    def rates(self, now: float) -> tuple[float, float]:
        """(failure rate, slow-call rate) in % over the window; -1 while below minimum_calls."""
        w = self.window
        w.expire(now)
        if w.calls < self._enough():
            return -1.0, -1.0
        return w.failed * 100.0 / w.calls, w.slow * 100.0 / w.calls
