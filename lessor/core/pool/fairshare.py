"""Fair shares of a global quota: who is served first, and who gives a connection back.

A ``scope="process"`` pool's quota lends ``max_total`` tokens, one per open
connection, to the processes that use the pool; each keeps its token as long as the
connection lives. Recall (:mod:`.recall`) brings back only *idle* connections, and
a busy process never has one idle: it hands each released connection to its next
waiting thread. So whoever opened connections first kept them: measured, two of four
workers held all 5 tokens of ``max_total=5`` for a whole run, and the other two
waited about 3 s for their first. So, while the quota is starved (see
:attr:`PoolState.starved`):

* **Who is served.** A freed token goes to the waiting holder that has the fewest,
  then to the one served longest ago (:meth:`FairShare.first`): not to the oldest
  Acquire, which is often the holder that just gave one back.
* **Who gives back.** The holders *wanting* are those holding tokens or waiting for
  one (``n``); a fair share is ``max_total / n``. A waiter below ``max_total // n``
  (or with nothing at all) is owed tokens at once: holders above their share are asked
  (:class:`~lessor.core.decisions.AskShed`, pushed as ``Shed``) to close a connection
  when they next release one, the fullest first, as many as the waiters are owed. The
  remainder, ``max_total % n`` tokens, rotates: a holder at the ceiling passes its
  extra token to a waiter at the floor once it has had it ``ROTATE_AFTER``.
* **Bounds.** An ask is owed until its holder gives a token back (for whatever
  reason: a closed connection returns its token) or is gone, and nobody is asked to
  go below its share, so what is owed never exceeds ``max_total``. An ask covers a
  waiter's need for ``SHED_PATIENCE``; then another holder above its share may be
  asked as well (the first may be inside a long transaction).

It decides on every turn that finds the quota starved, and again on recall's ticks
(every 50 ms) while it stays starved: whoever can be asked is also asked by recall.
The price is a reconnect for every token moved: none once each process has its floor
share, and ``(max_total % n) / ROTATE_AFTER`` per second for the rotation.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from lessor.core.decisions import AskShed, Decision
from lessor.holder import Holder

if TYPE_CHECKING:
    from lessor.core.pool.ledger import Ledger
    from lessor.core.pool.waitqueue import Waiter

__all__ = ["ROTATE_AFTER", "SHED_PATIENCE", "FairShare", "holdings"]

#: Seconds an unanswered ask covers a waiter's need; then another holder may be asked.
SHED_PATIENCE = 0.5
#: Seconds a holder keeps a token above its floor share before it is asked to pass it on.
ROTATE_AFTER = 0.1

_NEVER = float("-inf")


def holdings(ledger: Ledger) -> Counter[Holder]:
    """Tokens each holder has now, leases an earlier incarnation left them included."""
    held = Counter(loan.holder for loan in ledger.loans())
    held.update(Holder.parse(lease.holder) for lease in ledger.orphan_leases())
    return held


def _nobody(_holder: str) -> bool:
    return False


class FairShare:
    """The fair-share books of one quota of ``total`` tokens: asks owed, and when each
    holder was last served a token it had waited for."""

    __slots__ = ("_asks", "_served", "asked", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self._asks: dict[Holder, deque[float]] = {}  # holder -> when each owed ask was made
        self._served: dict[Holder, float] = {}
        #: Tokens asked back since the pool started (a counter).
        self.asked = 0

    def owed(self, holder: Holder) -> int:
        """Tokens ``holder`` was asked to give back and has not yet."""
        return len(self._asks.get(holder, ()))

    def released(self, holder: Holder) -> None:
        """``holder`` gave a token back: that settles its oldest ask."""
        asks = self._asks.get(holder)
        if asks:
            asks.popleft()
            if not asks:
                del self._asks[holder]

    def gone(self, holder: Holder) -> None:
        self._asks.pop(holder, None)
        self._served.pop(holder, None)

    def first(
        self,
        now: float,
        ledger: Ledger,
        queued: Iterable[Waiter],
        admits: Callable[[str], bool],
    ) -> Callable[[str], bool]:
        """Who the next freed token goes to: the admitted waiting holder with the fewest
        tokens, then the one served longest ago. Recorded as served ``now``."""
        waiting = {w.holder for w in queued if admits(w.holder)}
        if not waiting:
            return _nobody
        if len(waiting) == 1:
            (best,) = waiting
        else:
            held, served = holdings(ledger), self._served
            best = min(waiting, key=lambda h: (held[h], served.get(h, _NEVER), h))
        self._served[best] = now
        return best.__eq__

    def update(
        self,
        now: float,
        ledger: Ledger,
        queued: Iterable[Waiter],
        admits: Callable[[str], bool],
        out: list[Decision],
    ) -> None:
        """The quota is starved: ask holders above their share for as many tokens as the
        waiters below theirs are owed (and one per waiter at the floor, to rotate)."""
        held = holdings(ledger)
        waiting = Counter(w.holder for w in queued if admits(w.holder))
        if not waiting:
            return
        n = len(held.keys() | waiting.keys())
        share, floor, ceiling = self.total / n, self.total // n, -(-self.total // n)
        least = max(1, floor)  # a waiter with nothing is owed one, whatever n is
        urgent = sum(min(k, least - held[h]) for h, k in waiting.items() if held[h] < least)
        rotating = sum(1 for h in waiting if held[h] == floor) if 1 <= floor < share else 0
        fresh = sum(1 for asks in self._asks.values() for at in asks if now - at < SHED_PATIENCE)
        if urgent + rotating <= fresh:
            return
        spare = {h: k - self.owed(h) for h, k in held.items() if h.gives_back}
        asked: Counter[Holder] = Counter()
        for rotate_above, units in ((None, urgent), (ceiling, rotating)):
            covered = min(fresh, units)
            fresh -= covered
            for _ in range(units - covered):
                donor = self._donor(now, spare, share, rotate_above)
                if donor is None:
                    break
                spare[donor] -= 1
                asked[donor] += 1
                self._asks.setdefault(donor, deque()).append(now)
        self.asked += asked.total()
        out.extend(AskShed(holder, count) for holder, count in asked.items())

    def _donor(
        self, now: float, spare: dict[Holder, int], share: float, ceiling: int | None
    ) -> Holder | None:
        """The holder to ask next: above its share by what it was not yet asked for, the
        fullest first, then the one served longest ago. To rotate the remainder (a
        ``ceiling`` is given), only one beyond it or that has had its last token
        ``ROTATE_AFTER``."""
        served = self._served
        best: Holder | None = None
        best_key: tuple[int, float, str] | None = None
        for holder, left in spare.items():
            if left <= share:
                continue
            last = served.get(holder, _NEVER)
            if ceiling is not None and left <= ceiling and now - last < ROTATE_AFTER:
                continue
            key = (left, -last, holder)
            if best_key is None or key > best_key:
                best, best_key = holder, key
        return best
