"""Fair shares of a global quota (lessor/core/pool/fairshare.py), and a process's own
pool honouring a Shed (``PoolCore.shed``).

A hypothesis state machine plays the owner of a quota pool (``fair_share=True``) and
the processes holding its tokens: they ask for tokens, give them back, give up, die,
while the clock moves. It keeps its own books and checks, after every step:

* never more than ``max_total`` tokens out;
* what each holder owes (sheds asked, less tokens it gave back since) never exceeds
  what it holds, and every ask goes to a holder above its fair share
  (``max_total / holders wanting``) by what it was not yet asked for;
* while some holder waits with nothing and no token is free, enough sheds are owed to
  serve every such holder, or no holder is above its fair share any more;
* a freed token goes to a waiting holder with the fewest tokens.

The mutants at the end break each rule on purpose; the machine must catch them.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lessor.core.decisions import AskBack, AskShed, Create, Decision, Destroy, Fail, Grant
from lessor.core.pool import PoolCore
from lessor.core.pool.fairshare import ROTATE_AFTER, SHED_PATIENCE, FairShare
from lessor.factory import TokenFactory
from lessor.holder import Holder
from lessor.specs import PoolSpec
from tests.support.mutants import assert_catches, assert_passes
from tests.support.pool_core import Pool, of

WORKERS = tuple(Holder.worker(f"w{i}", 100 + i) for i in range(5))
THREAD = Holder.thread(1, 2, 3)  # holds tokens, is never asked (it cannot be told)


def quota(total: int) -> PoolSpec:
    return PoolSpec("q", TokenFactory(), max_size=total, max_idle=None, max_lifetime=None,
                    acquire_timeout=1000.0)  # fmt: skip


class QuotaModel(RuleBasedStateMachine):
    """The owner of a quota PoolCore and the holders of its tokens, with its own books."""

    CORE: ClassVar[type[PoolCore]] = PoolCore

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.tickets = itertools.count()
        self.tokens = itertools.count()
        self.waiting: dict[int, Holder] = {}  # ticket -> its holder
        self.held: dict[Holder, list[str]] = {}  # holder -> lease ids
        self.owed: Counter[Holder] = Counter()
        self.asks = 0

    @initialize(total=st.integers(1, 6), n=st.integers(2, 5), thread=st.booleans())
    def setup(self, total: int, n: int, thread: bool) -> None:
        self.total = total
        self.holders = WORKERS[:n] + ((THREAD,) if thread else ())
        self.core = self.CORE(quota(total), epoch="e", reusable=True, fair_share=True)
        self.run(self.core.start(self.now))

    # -- the owner ---------------------------------------------------------------------

    def run(self, out: list[Decision]) -> None:
        for d in out:
            if isinstance(d, Create):
                self.run(self.core.created(self.now, next(self.tokens)))
            elif isinstance(d, Grant):
                self.granted(d)
            elif isinstance(d, Fail):  # (its holder died: the model forgot it already)
                self.waiting.pop(d.ticket, None)  # type: ignore[call-overload]
            elif isinstance(d, AskShed):
                self.asked(d)
            else:
                assert not isinstance(d, Destroy), d  # tokens are reusable

    def granted(self, d: Grant) -> None:
        holder = self.waiting.pop(d.ticket)  # type: ignore[call-overload]
        waiting = {h for h in self.waiting.values()} | {holder}
        fewest = min(len(self.held.get(h, ())) for h in waiting)
        assert len(self.held.get(holder, ())) == fewest, (
            f"a token went to {holder} holding {len(self.held.get(holder, ()))}, while "
            f"another waited with {fewest}"
        )
        self.held.setdefault(holder, []).append(d.lease.id)

    def asked(self, d: AskShed) -> None:
        h = d.holder
        assert h.gives_back, f"{h} cannot be told to shed"
        share = self.total / len(self.wanting())
        left = len(self.held.get(h, ())) - self.owed[h] - (d.count - 1)
        assert left > share, (
            f"{h} asked to shed {d.count} with {len(self.held.get(h, ()))} held, "
            f"{self.owed[h]} owed: not above its share {share:.2f}"
        )
        self.owed[h] += d.count
        self.asks += d.count

    def wanting(self) -> set[Holder]:
        return {h for h, ids in self.held.items() if ids} | set(self.waiting.values())

    # -- the holders -------------------------------------------------------------------

    @rule(data=st.data())
    def want(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(self.holders))
        ticket = next(self.tickets)
        self.waiting[ticket] = holder
        self.run(self.core.acquire(self.now, ticket, holder))

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from([h for h, ids in self.held.items() if ids]))
        ids = self.held[holder]
        lease_id = ids.pop(data.draw(st.integers(0, len(ids) - 1)))
        if self.owed[holder]:
            self.owed[holder] -= 1  # the shed it owed (or any give-back: same token)
        self.run(self.core.release(self.now, lease_id, holder))

    @precondition(lambda self: bool(self.waiting))
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(sorted(self.waiting)))
        del self.waiting[ticket]
        self.run(self.core.cancel(self.now, ticket))

    @rule(data=st.data())
    def dies(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(self.holders))
        self.held.pop(holder, None)
        self.owed.pop(holder, None)
        for ticket in [t for t, h in self.waiting.items() if h == holder]:
            del self.waiting[ticket]
        self.run(self.core.reclaim_holder(self.now, holder))

    @rule(dt=st.sampled_from([0.01, 0.05, ROTATE_AFTER, SHED_PATIENCE]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.run(self.core.tick(self.now))

    # -- what must hold ----------------------------------------------------------------

    @invariant()
    def never_more_than_max_total(self) -> None:
        out = sum(len(ids) for ids in self.held.values())
        assert out <= self.total
        assert out == self.core.leased

    @invariant()
    def what_is_owed_is_bounded(self) -> None:
        for holder, owed in self.owed.items():
            assert owed <= len(self.held.get(holder, ())), f"{holder} owes more than it holds"
        assert sum(self.owed.values()) <= self.total

    @invariant()
    def nobody_stays_above_its_share_while_another_waits_with_nothing(self) -> None:
        if sum(len(ids) for ids in self.held.values()) < self.total:
            return  # a token is free (or on its way): nobody waits for a release
        empty = {h for h in self.waiting.values() if not self.held.get(h)}
        if not empty:
            return
        share = self.total / len(self.wanting())
        above = [
            h for h, ids in self.held.items()
            if h.gives_back and len(ids) - self.owed[h] > share
        ]  # fmt: skip
        assert sum(self.owed.values()) >= len(empty) or not above, (
            f"{sorted(empty)} wait with nothing, {dict(self.owed)} owed, yet {above} are "
            f"above their share {share:.2f}"
        )


QuotaModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestQuotaModel = QuotaModel.TestCase


# -- the rules, one scenario each --------------------------------------------------------


def test_four_workers_on_five_tokens_the_hoarder_is_asked_for_two() -> None:
    """The measured case: one worker took 4 tokens before the others came."""
    pool = Pool("q", max_size=5, reusable=True, fair_share=True)
    a, b, c, d = WORKERS[:4]
    for i in range(4):
        pool.lease(0.0, f"a{i}", a)
    pool.lease(0.0, "b0", b)
    # One ask per worker waiting with nothing; the fullest gives.
    assert of(pool.core.acquire(0.0, "c0", c), AskShed) == [AskShed(a, 1)]
    assert of(pool.core.acquire(0.0, "d0", d), AskShed) == [AskShed(a, 1)]
    assert of(pool.core.tick(0.01), AskShed) == []  # owed already: nobody is asked again
    (first,) = [lease.id for lease in pool.core.leases() if lease.holder == a][:1]
    out = pool.core.release(0.01, first, a)
    assert [g.ticket for g in of(out, Grant)] == ["c0"]  # the oldest of those with none


def test_a_waiter_with_its_floor_share_waits_for_the_rotation() -> None:
    """5 tokens, 4 workers: whoever has the fifth keeps it ROTATE_AFTER, then passes it on."""
    pool = Pool("q", max_size=5, reusable=True, fair_share=True)
    a, b, c, d = WORKERS[:4]
    for h in (a, b, c, d):
        pool.lease(0.0, f"{h}-0", h)
    pool.lease(0.0, "a1", a)  # the fifth, at once: it was free
    assert of(pool.core.acquire(0.0, "b1", b), AskShed) == []  # b waits with its floor (1)
    assert of(pool.core.tick(0.05), AskShed) == []  # a has had its extra token 50 ms
    assert of(pool.core.tick(ROTATE_AFTER), AskShed) == [AskShed(a, 1)]
    a_extra = [lease.id for lease in pool.core.leases() if lease.holder == a][-1]
    at = ROTATE_AFTER + 0.01
    assert [g.ticket for g in of(pool.core.release(at, a_extra, a), Grant)] == ["b1"]
    assert of(pool.core.acquire(at, "a2", a), AskShed) == []  # b has had it no time
    assert of(pool.core.tick(at + ROTATE_AFTER / 2), AskShed) == []
    assert of(pool.core.tick(at + ROTATE_AFTER), AskShed) == [AskShed(b, 1)]


def test_an_unanswered_ask_lets_another_holder_be_asked_after_the_patience() -> None:
    pool = Pool("q", max_size=4, reusable=True, fair_share=True)
    a, b, c = WORKERS[:3]
    for i in range(2):
        pool.lease(0.0, f"a{i}", a)
        pool.lease(0.0, f"b{i}", b)
    assert len(of(pool.core.acquire(0.0, "c0", c), AskShed)) == 1
    assert of(pool.core.tick(SHED_PATIENCE / 2), AskShed) == []  # the first may still come
    assert len(of(pool.core.tick(SHED_PATIENCE), AskShed)) == 1  # the other one is asked
    assert of(pool.core.tick(3 * SHED_PATIENCE), AskShed) == []  # and nobody below its share


def test_a_pool_without_fair_shares_asks_nobody_and_serves_the_oldest() -> None:
    pool = Pool("q", max_size=2, reusable=True)
    a, b = WORKERS[:2]
    pool.lease(0.0, "a0", a)
    pool.lease(0.0, "a1", a)
    assert of(pool.core.acquire(0.0, "a2", a), AskShed) == []
    assert of(pool.core.acquire(0.0, "b0", b), AskShed) == []
    first = pool.core.leases()[0].id
    assert [g.ticket for g in of(pool.core.release(0.0, first, a), Grant)] == ["a2"]


# -- a process's own pool honouring a Shed ------------------------------------------------


def test_shed_closes_idle_resources_now_and_leased_ones_as_they_come_back() -> None:
    pool = Pool("own", max_size=3)
    me = Holder.thread(1, 1, 1)
    leases = [pool.lease(0.0, i, me) for i in range(3)]
    pool.core.release(0.0, leases[0].id, me)  # idle now
    out = pool.core.shed(0.0, 2)
    assert [d.reason for d in of(out, Destroy)] == ["shed"] and pool.core.size == 2
    out = pool.core.release(0.0, leases[1].id, me)
    assert [d.reason for d in of(out, Destroy)] == ["shed"]  # owed: destroyed, not idled
    out = pool.core.release(0.0, leases[2].id, me)
    assert of(out, Destroy) == [] and pool.core.idle == 1  # paid up: kept as usual


def test_any_resource_destroyed_counts_toward_a_shed() -> None:
    pool = Pool("own", max_size=2)
    me = Holder.thread(1, 1, 1)
    one, two = pool.lease(0.0, 1, me), pool.lease(0.0, 2, me)
    pool.core.shed(0.0, 1)
    assert [d.reason for d in of(pool.core.release(0.0, one.id, me, broken=True), Destroy)] == [
        "broken"
    ]
    assert of(pool.core.release(0.0, two.id, me), Destroy) == []  # the broken one paid it
    pool.core.shed(0.0, 1)  # counts add up from now, not from the past
    assert pool.core.size == 0


def test_a_shed_waiter_of_the_own_pool_makes_a_new_resource() -> None:
    """A released resource that is shed does not go to the thread waiting for it: that
    thread's pool makes a new one (which takes a token, for whoever is owed it first)."""
    pool = Pool("own", max_size=1)
    me, other = Holder.thread(1, 1, 1), Holder.thread(1, 2, 1)
    lease = pool.lease(0.0, "mine", me)
    pool.core.acquire(0.0, "next", other)
    pool.core.shed(0.0, 1)
    out = pool.core.release(0.0, lease.id, me)
    assert of(out, Destroy) and of(out, Create) and not of(out, Grant)


def test_a_lease_reclaimed_while_a_shed_is_owed_is_closed_not_kept_idle() -> None:
    """A dead holder's resource pays a Shed at once, as a release does: kept idle, its
    token would wait for the quota's next recall (up to 50 ms on a Ray node)."""
    pool = Pool("own", max_size=2)
    dead, live = Holder.worker("ray-1", 11), Holder.thread(1, 1, 1)
    pool.lease(0.0, 1, dead)
    pool.lease(0.0, 2, live)
    pool.core.shed(0.0, 1)
    out = pool.core.reclaim_holder(0.0, dead)
    assert [d.reason for d in of(out, Destroy)] == ["shed"] and pool.core.idle == 0
    out = pool.core.reclaim_holder(0.0, live)  # paid up: this one goes as reclaims go
    assert "shed" not in [d.reason for d in of(out, Destroy)]


def test_a_shed_or_a_give_back_with_nothing_idle_asks_the_holders_that_park_leases() -> None:
    """A pool lending to caches (a Ray node agent's tasks) may have nothing idle and no
    waiter of its own: its quota's GiveBack or Shed must reach the parked leases."""
    pool = Pool("own", max_size=2)
    cache, thread = Holder.worker("ray-1", 11), Holder.thread(1, 1, 1)
    pool.lease(0.0, 1, cache)
    pool.lease(0.0, 2, thread)
    assert [d.holders for d in of(pool.core.evict_idle(0.0), AskBack)] == [(cache,)]
    assert [d.holders for d in of(pool.core.shed(0.0, 1), AskBack)] == [(cache,)]


def test_with_an_idle_resource_a_give_back_closes_it_and_asks_nobody() -> None:
    pool = Pool("own", max_size=2)
    cache = Holder.worker("ray-1", 11)
    pool.lease(0.0, 1, cache)
    idle = pool.lease(0.0, 2, cache)
    pool.core.release(0.0, idle.id, cache)
    out = pool.core.evict_idle(0.0)
    assert of(out, AskBack) == [] and [d.reason for d in of(out, Destroy)] == ["idle"]


# -- mutants: each breaks one rule; the machine catches it --------------------------------


class _NeverAsks(FairShare):
    def update(self, *args: Any) -> None:
        pass


class _AsksEveryone(FairShare):
    def update(self, now: float, ledger: Any, queued: Any, admits: Any, out: Any) -> None:
        if any(True for _ in queued):
            held = Counter(loan.holder for loan in ledger.loans())
            out.extend(AskShed(h, 1) for h in held if h.gives_back)


class _OldestFirst(FairShare):
    def first(self, now: float, ledger: Any, queued: Any, admits: Any) -> Any:
        return admits


class _NeverSettled(FairShare):
    def released(self, holder: Holder) -> None:
        pass


def _core_with(fair: type[FairShare]) -> type[PoolCore]:
    class Mutant(PoolCore):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._fair = fair(self.spec.max_size)

    Mutant.__name__ = fair.__name__.strip("_")
    return Mutant


def test_the_machine_passes_the_real_core_under_the_mutant_settings() -> None:
    assert_passes(QuotaModel, max_examples=100)


@pytest.mark.parametrize(
    ("fair", "pattern"),
    [
        (_NeverAsks, "wait with nothing"),
        (_AsksEveryone, "not above its share"),
        (_OldestFirst, "a token went to"),
        (_NeverSettled, "wait with nothing"),
    ],
    ids=["never-asks", "asks-everyone", "oldest-first", "never-settled"],
)
def test_the_machine_catches_a_broken_fair_share(fair: type[FairShare], pattern: str) -> None:
    assert_catches(QuotaModel, _core_with(fair), pattern)


def test_the_bound_on_asks_follows_from_the_share() -> None:
    """Asks per holder stay below what it holds above its share: ceil(held - share)."""
    pool = Pool("q", max_size=6, reusable=True, fair_share=True)
    a, b, c = WORKERS[:3]
    for i in range(6):
        pool.lease(0.0, f"a{i}", a)
    asked = of(pool.core.acquire(0.0, "b", b), AskShed) + of(
        pool.core.acquire(0.0, "c", c), AskShed
    )
    total = sum(d.count for d in asked)
    assert total == 2 <= math.ceil(6 - 6 / 3)  # one per waiter with nothing, no more


# -- the wire and the specs ---------------------------------------------------------------


def test_the_quota_messages_have_their_stable_tags_and_check_their_values() -> None:
    from lessor.protocol.messages import LocalPoolStats, Shed, decode, encode

    assert (Shed.TAG, LocalPoolStats.TAG) == (35, 36)
    assert decode(encode(Shed("pg", 2))) == Shed("pg", 2)
    with pytest.raises(ValueError, match=r"Shed\.count"):
        Shed("pg", 0)
    with pytest.raises(ValueError, match=r"LocalPoolStats\.size"):
        LocalPoolStats("pg", -1, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0)


def test_a_process_pool_leaves_a_factory_slot_free_of_creates_waiting_for_tokens() -> None:
    from lessor.worker.local_pools import local_spec, quota_spec

    spec = PoolSpec("pg", TokenFactory(), max_size=4, scope="process", max_total=8,
                    lease_ttl=60.0)  # fmt: skip
    assert local_spec(spec, Pool("q").core).factory_concurrency == 5  # type: ignore[arg-type]
    assert quota_spec(spec).lease_ttl is None  # a token lives as long as its connection
