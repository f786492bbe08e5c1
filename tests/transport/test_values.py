"""Typed values (issue #14): what crosses keeps its exact type, what cannot cross is
refused naming its type. Hostile frames: test_values_hostile.py."""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import threading
import uuid
import zoneinfo
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lessor import Runtime, TaskFailed
from lessor.errors import ProtocolError
from lessor.protocol import values, wire
from lessor.protocol.messages import Lease, Submit, decode, encode, to_parts
from lessor.protocol.wire import Kind

# -- every supported value, nested in every combination ----------------------------------

_DAY = timedelta(hours=24)
_KEYS = sorted(zoneinfo.available_timezones())  # (what values carries)
zones = st.one_of(
    st.none(),
    st.just(timezone.utc),
    st.builds(timezone, st.timedeltas(-_DAY, _DAY).filter(lambda d: abs(d) < _DAY)),
    st.builds(timezone, st.timedeltas(-_DAY, _DAY).filter(lambda d: abs(d) < _DAY), st.text()),
    st.integers(0, len(_KEYS) - 1).map(lambda i: zoneinfo.ZoneInfo(_KEYS[i])),
)
decimals = st.decimals(allow_nan=False).filter(
    lambda d: not d.is_finite() or abs(d.as_tuple().exponent) <= values.DECIMAL_EXPONENT  # type: ignore[arg-type]
)
folds = st.integers(0, 1)
hashable_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**200), 2**200),
    st.floats(allow_nan=False), st.complex_numbers(allow_nan=False), st.text(), st.binary(),
    decimals, st.uuids(), st.dates(), st.timedeltas(),
    st.builds(lambda t, z, f: t.replace(tzinfo=z, fold=f), st.times(), zones, folds),
    st.builds(lambda t, z, f: t.replace(tzinfo=z, fold=f), st.datetimes(), zones, folds),
)  # fmt: skip
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
anything = st.recursive(
    hashables,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(hashables, inner, max_size=3),
        st.sets(hashables, max_size=3),
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equal and of the very same types all the way down (signs of zeros, zones, folds;
    a NaN is the same as a NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        equal = a == b or (math.isnan(a) and math.isnan(b))
        return equal and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):  # msgpack keeps a dict's order
        pairs = zip(a.items(), b.items(), strict=True)
        return len(a) == len(b) and all(same(k, j) and same(v, w) for (k, v), (j, w) in pairs)
    if isinstance(a, (set, frozenset)):  # each element has a partner of the same value
        # (not ``a == b``: a NaN inside an element, as in (nanj,), is equal to no copy)
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, (datetime, time)):
        wall = a.replace(tzinfo=None) == b.replace(tzinfo=None)
        return wall and a.fold == b.fold and same_zone(a.tzinfo, b.tzinfo)
    return bool(a == b)


def same_zone(a: tzinfo | None, b: tzinfo | None) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, timezone):
        return a.__getinitargs__() == b.__getinitargs__()  # type: ignore[attr-defined]
    return a is None or getattr(a, "key", None) == getattr(b, "key", None)


def lease_of(value: Any) -> Lease:
    return Lease("p/w/1", "p", value, "w", 1.0, None)


def resource_of(frame: bytes) -> Any:
    lease = decode(frame)
    assert isinstance(lease, Lease)
    return lease.resource


def round_trip(value: Any) -> Any:
    return resource_of(encode(lease_of(value)))


@settings(max_examples=400)
@given(anything)
def test_every_supported_value_round_trips_with_its_types(value: Any) -> None:
    assert same(round_trip(value), value)
    kind, corr, _, got = wire.parse(wire.frame(Kind.REPLY, 3, "", Submit("b", [value, value])))
    assert (kind, corr) == (Kind.REPLY, 3)
    assert isinstance(got, Submit) and same(got.items, [value, value])


def test_a_handwritten_mix_round_trips() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    value = {
        (1, "a"): {frozenset({(2, 3)}), 4},
        frozenset({b"k"}): [(), set(), frozenset(), bytes(2)],
        "when": [date(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999, paris, fold=1),
                 time(23, 59, tzinfo=timezone(timedelta(hours=-5), "EST")), -timedelta(1)],
        "numbers": [2**64, -(2**63) - 1, 10**300, complex(-0.0, math.inf), Decimal("-0.00"),
                    Decimal("Infinity"), True, 2**64 - 1],
        "id": uuid.UUID(int=7),
    }  # fmt: skip
    assert same(round_trip(value), value)
    nans = round_trip([Decimal("NaN12"), Decimal("-sNaN"), math.nan])
    assert [str(d) for d in nans] == ["NaN12", "-sNaN", "nan"]


def test_lessor_frames_themselves_carry_no_extension_types() -> None:
    """Envelopes and typed fields stay plain msgpack (a Kind, an IntEnum, goes as an int:
    were it sent as it is, strict types would refuse every frame)."""
    raw = msgpack.unpackb(wire.frame(Kind.ASK, 5, "slots", lease_of({"a": [1, b"x"]})))
    assert raw == [int(Kind.ASK), 5, "slots", to_parts(lease_of({"a": [1, b"x"]}))]
    assert type(raw[0]) is int


def test_packers_are_never_shared_between_threads() -> None:
    results: dict[int, bool] = {}

    def work(n: int) -> None:
        value = [(n, i, frozenset({(n, "x")}), {i: (date(2000, 1, 1 + n),)}) for i in range(300)]
        results[n] = all(same(round_trip(value), value) for _ in range(30))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == dict.fromkeys(range(8), True)


# -- what does not cross is refused, by name ---------------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Mood(str, enum.Enum):
    GLAD = "glad"


Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass
class Box:
    size: int


class Stamp(datetime):
    pass


class Offset(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1)


def _file_zone() -> tzinfo:
    """A ZoneInfo read from a file: it has no key."""
    path = next(Path(root, "UTC") for root in zoneinfo.TZPATH if Path(root, "UTC").is_file())
    with path.open("rb") as file:
        return zoneinfo.ZoneInfo.from_file(file)


def nest(depth: int) -> Any:
    """``depth`` tuples and frozensets inside one another (and a dict and a list around)."""
    value: Any = 0
    for i in range(depth):
        value = (value,) if i % 2 else frozenset({value})
    return {"k": [value]}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (object(), "object (builtins.object)"),
        (Color.RED, f"Color ({__name__}.Color): it is an enum, send x.value"),
        ({"deep": [(1, Mood.GLAD)]}, f"Mood ({__name__}.Mood): it is an enum"),
        (Point(1, 2), f"Point ({__name__}.Point): it is a namedtuple"),
        (Box(1), f"Box ({__name__}.Box): it is a dataclass"),
        (collections.OrderedDict(a=1), "OrderedDict (collections.OrderedDict): it is a dict"),
        (collections.defaultdict(int), "defaultdict (collections.defaultdict): it is a dict"),
        (collections.UserList(), "UserList (collections.UserList)"),
        (Stamp(2020, 1, 1), "it is a datetime subclass, convert it to datetime first"),
        (datetime(2020, 1, 1, tzinfo=Offset()), f"tzinfo of type Offset ({__name__}.Offset)"),
        (time(tzinfo=_file_zone()), "time in ZoneInfo None: lessor carries the keys of"),
        (Decimal("1E+1000000"), "exponent 1000000"),
        (Decimal("1E-1000000"), "exponent -1000000"),
        (nest(40), "nest more than 16 deep"),
        (range(3), "range (builtins.range)"),
    ],
)  # fmt: skip
def test_what_cannot_cross_is_refused_naming_its_type(value: Any, named: str) -> None:
    with pytest.raises(ProtocolError, match="cannot encode Lease") as info:
        encode(lease_of(value))
    assert named in str(info.value)
    with pytest.raises(ProtocolError) as info:
        wire.frame(Kind.REPLY, 1, "", lease_of(value))
    assert named in str(info.value)


def as_ext(value: Any) -> msgpack.ExtType:
    """Pack a value the way lessor does, by hand and with no depth bound."""
    if type(value) in (tuple, set, frozenset):
        items = msgpack.packb(list(value), strict_types=True, default=as_ext)
        return msgpack.ExtType(values.CODES[type(value)], items)
    return msgpack.ExtType(*values._DEFAULTS[0](value))


class Raw(bytes):
    """msgpack bytes for :func:`handmade` to put in as they are (msgpack.ExtType cannot
    make the negative codes msgpack keeps for itself)."""


def raw_ext(code: int, data: bytes) -> Raw:
    return Raw(b"\xc9" + len(data).to_bytes(4, "big") + code.to_bytes(1, "big", signed=True) + data)


SPOT = "\x00spliced here\x00"


def handmade(resource: Any) -> bytes:
    """A Lease frame whose resource is ``resource``, raw: an ExtType goes as it is, a
    tuple with no depth bound, :class:`Raw` bytes verbatim."""
    parts = to_parts(lease_of(None))
    parts[3] = SPOT if isinstance(resource, Raw) else resource
    packed: bytes = msgpack.packb(parts, strict_types=True, default=as_ext)
    return packed.replace(msgpack.packb(SPOT), resource) if isinstance(resource, Raw) else packed


def test_the_depth_bound_is_the_same_both_ways() -> None:
    deepest = nest(values.MAX_DEPTH)
    assert same(round_trip(deepest), deepest)
    with pytest.raises(ProtocolError, match="more than 16 deep"):
        encode(lease_of([(deepest,)]))
    with pytest.raises(ProtocolError, match="more than 16 deep"):
        decode(handmade([(deepest,)]))  # the same value, packed with no bound


def test_bytes_likes_and_bools_are_what_msgpack_makes_them() -> None:
    """msgpack writes any bytes-like as bin before lessor sees it (docs/values.md)."""
    got = round_trip([bytearray(b"ab"), memoryview(b"cd"), True, {False}, msgpack.Timestamp(1)])
    assert same(got, [b"ab", b"cd", True, {False}, msgpack.Timestamp(1)])


# -- through real worker processes ---------------------------------------------------------


def typed(item: Any) -> Any:
    """A map function: the item back, with its type's name (a Color when asked)."""
    return Color.RED if item == "enum" else (item, type(item).__name__)


def test_map_items_and_results_keep_their_types_through_worker_processes() -> None:
    items = [(1, "a"), {frozenset({(2,)})}, date(2024, 2, 29), Decimal("0.10"), 2**80,
             datetime(2024, 3, 31, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin"), fold=1),
             {(1, 2): timedelta(seconds=-1)}, uuid.UUID(int=3), 1 - 2j, [()]]  # fmt: skip
    with Runtime(handle_signals=False) as runtime:
        results = runtime.map(typed, [*items, "enum"], workers=1, return_exceptions=True)
        with pytest.raises(ProtocolError, match=r"map item 1: .* cannot send a Point"):
            runtime.map(typed, [1, Point(1, 2)])  # refused before any worker starts
    assert same(results[:-1], [(item, type(item).__name__) for item in items])
    assert isinstance(results[-1], TaskFailed)
    assert f"cannot send a Color ({__name__}.Color)" in str(results[-1])
