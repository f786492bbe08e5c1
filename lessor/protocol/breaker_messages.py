"""The circuit breaker's messages (tags 17-24); import them from :mod:`lessor.protocol.messages`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lessor.protocol.codec import _FIELDS, Message, message, one_of

__all__ = [
    "BreakerState",
    "BreakerStats",
    "ForceBreaker",
    "Outcomes",
    "Probe",
    "ProbePermit",
    "ProbeResult",
    "WatchBreaker",
]

_BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")  # core.breaker


@message(17)
@dataclass(frozen=True, slots=True)
class WatchBreaker(Message):
    """Subscribe the sender to a breaker's changes (pushed); answered with its state."""

    breaker: str


@message(18)
@dataclass(frozen=True, slots=True)
class BreakerState(Message):
    """Pushed on every change; ``generation`` grows with each, ``until`` (monotonic s) ends open."""

    breaker: str
    state: str
    generation: int
    until: float | None

    def __post_init__(self) -> None:
        one_of(self, "state", _BREAKER_STATES)


@message(19)
@dataclass(frozen=True, slots=True)
class Outcomes(Message):
    """A handle's outcomes under ``generation``, a byte per call (bit 0 failed, 1 slow, 2
    ignored), and how many calls it refused."""

    breaker: str
    generation: int
    codes: bytes
    rejected: int = 0

    def __post_init__(self) -> None:
        if self.rejected < 0 or self.codes.translate(None, bytes(range(8))):  # not in 0-7
            raise ValueError("Outcomes: codes are 0-7 and rejected is >= 0")


@message(20)
@dataclass(frozen=True, slots=True)
class Probe(Message):
    """In half-open: ask for a permit to make one probe call (BreakerOpen if none)."""

    breaker: str


@message(21)
@dataclass(frozen=True, slots=True)
class ProbePermit(Message):
    """A probe permit; its call's outcome goes back as ProbeResult."""

    breaker: str
    probe: int
    generation: int


@message(22)
@dataclass(frozen=True, slots=True)
class ProbeResult(Message):
    """How probe ``probe`` went (an outcome code; IGNORED gives the permit back)."""

    breaker: str
    probe: int
    code: int

    def __post_init__(self) -> None:
        one_of(self, "code", tuple(range(8)))


@message(23)
@dataclass(frozen=True, slots=True)
class ForceBreaker(Message):
    """The operator: ``forced_open``, ``disabled``, or ``closed`` (reset the breaker)."""

    breaker: str
    state: str

    def __post_init__(self) -> None:
        one_of(self, "state", ("closed", "forced_open", "disabled"))


@message(24)
@dataclass(frozen=True, slots=True)
class BreakerStats(Message):
    """Counts since made; rates (%) over the window, -1 below ``minimum_calls``."""

    breaker: str
    state: str
    generation: int
    time_in_state_s: float
    calls: int
    failures: int
    slow_calls: int
    rejected: int
    ignored: int
    trips: int
    probes: int
    probes_out: int
    window_calls: int
    failure_rate: float
    slow_call_rate: float
    subscribers: int

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS[BreakerStats]}
