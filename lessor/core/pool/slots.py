"""The resources a pool has: each idle, checking or leased, with lifetimes and idle times.

A resource enters when the factory made it (``add``) and leaves by a ``Destroy``
decision: broken, failed check or reset, lifetime over (never while leased: it is
retired when it comes back), idle too long above ``min_size``, or the pool closed.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from lessor.core.decisions import Check, Decision, Destroy, Reset
from lessor.core.pool.stats import Counters
from lessor.specs import PoolSpec

__all__ = ["Slot", "Slots"]

_INF = float("inf")


@dataclass(eq=False, slots=True)
class Slot:
    id: int
    resource: Any
    retire_at: float  # end of its (jittered) max_lifetime
    last_used: float  # when it last became idle


class Slots:
    """Every resource of one pool by slot id; the idle ones in LIFO or FIFO order.

    ``checking`` holds those off the owner's thread in a check (before a borrow) or a
    reset (after a return); ``creating`` counts resources on their way in. Leased
    ones are in neither (the ledger knows them).
    """

    def __init__(self, spec: PoolSpec, rng: random.Random, counters: Counters) -> None:
        self._spec = spec
        #: The earliest deadline added since the owner last looked (PoolCore.take_alarm).
        self.alarm = float("inf")
        self._rng = rng
        self._counters = counters
        self._lifo = spec.strategy == "lifo"
        self._ids = itertools.count(1)
        self._retire: list[tuple[float, int]] = []  # (retire_at, slot id), stale ones lazily
        self.all: dict[int, Slot] = {}
        self.idle: deque[Slot] = deque()
        self.checking: dict[int, Slot] = {}
        self.creating = 0
        self.closed = False  # resources coming back are destroyed, not kept

    def __len__(self) -> int:
        return len(self.all)

    def add(self, now: float, resource: Any) -> Slot:
        """A resource the factory made (it was counted in ``creating``)."""
        self.creating -= 1
        self._counters.created += 1
        lifetime = self._spec.max_lifetime
        retire_at = _INF
        if lifetime is not None:
            jitter = self._spec.lifetime_jitter * self._rng.random()
            retire_at = now + lifetime * (1.0 - jitter)
        slot = Slot(next(self._ids), resource, retire_at, now)
        self.all[slot.id] = slot
        if retire_at != _INF:
            heapq.heappush(self._retire, (retire_at, slot.id))
            self.alarm = min(self.alarm, retire_at)
        return slot

    def take_idle(self, now: float, out: list[Decision]) -> Slot | None:
        """An idle resource to lend, retiring those whose lifetime is over on the way."""
        idle = self.idle
        while idle:
            slot = idle.pop() if self._lifo else idle.popleft()
            if slot.retire_at > now:
                return slot
            self.destroy(slot, "lifetime", out)
        return None

    def to_idle(self, now: float, slot: Slot, out: list[Decision]) -> None:
        if self.closed:
            self.destroy(slot, "closed", out)
        elif slot.retire_at <= now:
            self.destroy(slot, "lifetime", out)
        else:
            slot.last_used = now
            idle = self.idle
            idle.append(slot)
            max_idle = self._spec.max_idle
            if max_idle is not None and len(idle) > self._spec.min_size:
                evict_at = idle[0].last_used + max_idle
                self.alarm = min(self.alarm, evict_at)

    def check(self, slot: Slot, out: list[Decision]) -> None:
        self.checking[slot.id] = slot
        out.append(Check(slot.id, slot.resource))

    def reset(self, slot: Slot, out: list[Decision]) -> None:
        self.checking[slot.id] = slot
        out.append(Reset(slot.id, slot.resource))

    def destroy(self, slot: Slot, reason: str, out: list[Decision]) -> None:
        del self.all[slot.id]
        self._counters.destroyed += 1
        out.append(Destroy(slot.resource, reason))

    def evict(self, now: float, out: list[Decision]) -> None:
        """Destroy idle resources past ``max_idle`` (above ``min_size``) or their lifetime."""
        spec, idle = self._spec, self.idle
        if spec.max_idle is not None:
            while len(idle) > spec.min_size and idle[0].last_used + spec.max_idle <= now:
                self.destroy(idle.popleft(), "idle", out)
        retire = self._retire
        while retire and retire[0][0] <= now:
            slot = self.all.get(heapq.heappop(retire)[1])
            if slot is not None and slot in idle:
                idle.remove(slot)
                self.destroy(slot, "lifetime", out)
            # a leased or checking resource is retired when it comes back

    def evict_above_min(self, out: list[Decision]) -> None:
        while len(self.idle) > self._spec.min_size:
            self.destroy(self.idle.popleft(), "idle", out)

    def close(self, out: list[Decision]) -> None:
        self.closed = True
        while self.idle:
            self.destroy(self.idle.pop(), "closed", out)

    def next_eviction(self) -> float | None:
        best = _INF
        max_idle = self._spec.max_idle
        if max_idle is not None and len(self.idle) > self._spec.min_size:
            best = self.idle[0].last_used + max_idle
        if self._retire:
            best = min(best, self._retire[0][0])
        return None if best == _INF else best
