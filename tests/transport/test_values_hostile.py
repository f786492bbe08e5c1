"""Hostile frames against the typed values (issue #14): whatever a peer sends, the
decoder answers with a value or a ProtocolError, never another exception, a crash, a
hang, or code run for the peer (no pickle, no eval, no import of a name it chose)."""

from __future__ import annotations

import contextlib
import pickle
import random
import threading
import uuid
import zoneinfo
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from unittest import mock

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lessor import PoolSpec, Runtime, TokenFactory
from lessor.errors import ProtocolError
from lessor.protocol import values, wire
from lessor.protocol.messages import Acquire, Release, Submit, decode, encode, to_parts
from lessor.protocol.wire import Kind
from tests.transport.test_values import (
    SPOT,
    Box,
    Raw,
    anything,
    as_ext,
    handmade,
    lease_of,
    raw_ext,
    resource_of,
    same,
)
from tests.transport.test_wire_fuzz import authed, error_of, still_serves

Ext = msgpack.ExtType
_PICKLE = pickle.dumps(Box(1))
_NAIVE = bytes(as_ext(datetime(2020, 1, 1)).data)  # a datetime, to add a bad zone to


@pytest.mark.parametrize(
    ("resource", "why"),
    [
        (Ext(0, b""), "ext code 0"), (Ext(12, b""), "ext code 12"),
        (Ext(127, b"x"), "ext code 127"), (raw_ext(-7, b""), "ext code -7"),
        (Ext(99, _PICKLE), "ext code 99"),
        (Ext(values.TUPLE, b"\xc1"), "malformed tuple"),
        (Ext(values.TUPLE, msgpack.packb({1: 2})), "malformed tuple: items are a dict"),
        (Ext(values.TUPLE, msgpack.packb([1]) + b"\x00"), "malformed tuple"),
        (Ext(values.TUPLE, _PICKLE), "malformed tuple"),
        (Ext(values.SET, msgpack.packb([[1]])), "malformed set: unhashable"),
        (Ext(values.FROZENSET, msgpack.packb([Ext(values.SET, msgpack.packb([]))])),
         "malformed frozenset"),
        ({Ext(values.SET, msgpack.packb([1])): 1}, "not a msgpack frame: unhashable"),
        (Ext(values.BIGINT, b""), "malformed int beyond 64 bits"),
        (Ext(values.BIGINT, b"\x05"), "an int msgpack carries itself"),
        (Ext(values.COMPLEX, bytes(15)), "malformed complex"),
        (Ext(values.DECIMAL, "é".encode()), "malformed Decimal"),
        (Ext(values.DECIMAL, _PICKLE), "malformed Decimal"),
        *[(Ext(values.DECIMAL, text.encode()), "malformed Decimal")
          for text in [" 1", "1_000", "nan", "\u0661", "1e2", "+1", "1E+1000000", "9E-1000000",
                       "1E+999999999999999999999", ""]],
        (Ext(values.UUID, bytes(15)), "malformed UUID"),
        (Ext(values.DATE, b"\x07\xe4\x0d\x01"), "malformed date"),
        (Ext(values.DATE, b"\x00\x00\x01\x01"), "malformed date"),
        (Ext(values.DATE, b"\x07\xe4\x01\x01\x00"), "malformed date"),
        (Ext(values.TIME, b"\x18\x00\x00\x00\x00\x00\x00\x00"), "malformed time"),
        (Ext(values.TIME, b"\x00\x00\x00\x00\x00\x00\x00\x02"), "malformed time"),
        (Ext(values.TIMEDELTA, b"\x00\x00\x00\x00\x00\x01\x51\x80\x00\x00\x00\x00"),
         "malformed timedelta: not in canonical form"),
        (Ext(values.TIMEDELTA, b"\x7f\xff\xff\xff" + bytes(8)), "malformed timedelta"),
        *[(Ext(values.DATETIME, _NAIVE + zone), "malformed datetime")
          for zone in [b"\x09", b"\x01" + bytes(9), b"\x01\x00", b"\x02" + bytes(8) + b"\xff",
                       b"\x01" + (86400 * 10**6).to_bytes(8, "big"), b"\x03Nowhere/Land",
                       b"\x03../../../../etc/passwd", b"\x03America", b"\x03/etc/localtime",
                       b"\x03" + _PICKLE]],
    ],
)  # fmt: skip
def test_hostile_values_are_protocol_errors(resource: Any, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode(handmade(resource))


def deep_tuples(depth: int) -> msgpack.ExtType:
    """``depth`` tuples, each the one item of the next, built in linear time."""
    sizes = [1]  # the innermost items: an empty array
    for _ in range(depth - 1):
        sizes.append(1 + 6 + sizes[-1])  # an array of one ext32(tuple, items)
    head = b"\x91\xc9", bytes([values.TUPLE])
    heads = [head[0] + size.to_bytes(4, "big") + head[1] for size in sizes[-2::-1]]
    return Ext(values.TUPLE, b"".join(heads) + b"\x90")


def test_deep_tuples_are_what_they_say() -> None:
    assert resource_of(handmade(deep_tuples(3))) == (((),),)


@pytest.mark.parametrize("depth", [values.MAX_DEPTH + 1, 300, 100_000])
def test_absurd_nesting_is_refused_without_touching_the_stack(depth: int) -> None:
    """Unbounded, each nested tuple costs ~40 KB of C stack: 300 of them crash Python."""
    frame = handmade(deep_tuples(depth))
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            decode(frame)
        except BaseException as exc:  # the outcome is the test
            outcome.append(exc)

    threading.stack_size(1 << 20)  # a small thread stack: the bound must fit it
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(0)
    assert len(outcome) == 1 and isinstance(outcome[0], ProtocolError)
    assert "more than 16 deep" in str(outcome[0])
    with pytest.raises(ProtocolError, match="not a msgpack frame"):  # lists: msgpack's own bound
        decode(b"\x91" * 5000 + b"\xc0")


@settings(max_examples=300)
@given(anything, st.data())
def test_truncated_or_mutated_frames_give_protocol_errors_only(
    value: Any, data: st.DataObject
) -> None:
    frame = encode(lease_of(value))
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(ProtocolError):
        decode(frame[:cut])
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    try:
        msg = decode(bytes(mutated))
    except ProtocolError:
        return
    assert same(to_parts(decode(encode(msg))), to_parts(msg))  # whatever message it now is


def test_nothing_is_ever_unpickled_evaluated_or_imported() -> None:
    value = [(1, 2), {3}, frozenset({4}), 2**70, 1j, Decimal("1.5"), uuid.UUID(int=1),
             date(2020, 1, 1), time(1, tzinfo=zoneinfo.ZoneInfo("UTC")), timedelta(1),
             datetime(2020, 1, 1, tzinfo=timezone.utc)]  # fmt: skip
    frames = {"good": encode(lease_of(value)),
              "zone": handmade(Ext(values.DATETIME, bytes(12) + b"\x03" + _PICKLE))}  # fmt: skip
    frames |= {code: handmade(raw_ext(code, _PICKLE)) for code in range(-128, 128)}
    decode(frames["good"])  # (the zone database is read once, before the patches)
    forbidden = mock.Mock(side_effect=AssertionError("must not be called"))
    outcomes: dict[Any, Any] = {}
    patches = [mock.patch.multiple(pickle, loads=forbidden, load=forbidden, Unpickler=forbidden)]
    for name in ("__import__", "eval", "exec"):
        patches.append(mock.patch(f"builtins.{name}", forbidden))
    patches.append(mock.patch("importlib.import_module", forbidden))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        for name, frame in frames.items():
            try:
                outcomes[name] = resource_of(frame)
            except ProtocolError as exc:
                outcomes[name] = exc
    assert forbidden.call_count == 0
    assert same(outcomes.pop("good"), value)
    assert outcomes.pop(values.BIGINT) == int.from_bytes(_PICKLE, "big", signed=True)  # a number
    assert all(isinstance(got, ProtocolError) for got in outcomes.values()), outcomes


def test_extension_values_in_typed_fields_are_refused_by_the_field_checks() -> None:
    """Only Any fields carry them: an int field stays 64-bit, a list field a list."""
    acquire, release, submit = (to_parts(Acquire("p")), to_parts(Release("p/w/1")),
                                to_parts(Submit("b", [1, 2])))  # fmt: skip
    acquire[3], release[1], submit[2] = as_ext(2**70), as_ext(("p/w/1",)), as_ext((1, 2))
    for frame, field in [(acquire, "Acquire.priority"), (release, "Release.lease_id"),
                         (submit, "Submit.items")]:  # fmt: skip
        with pytest.raises(ProtocolError, match=field):
            decode(msgpack.packb(frame))


# -- the wire fuzz, with extension types in every position --------------------------------


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(handle_signals=False)
    rt.add_pool(PoolSpec("slots", TokenFactory(), max_size=3))
    yield rt
    rt.shutdown(timeout=5)


_GOOD = [(1, "a"), {2}, 2**99, 1j, Decimal("2"), date(2000, 1, 2),
         datetime(2000, 1, 2, tzinfo=timezone.utc), timedelta(3)]  # fmt: skip


def _random_ext(rng: random.Random) -> Raw:
    code = rng.choice([*values.CODES.values(), 0, 12, 100, -1, -9])
    good = as_ext(rng.choice(_GOOD))
    payload = good.data if rng.random() < 0.5 else rng.randbytes(rng.randrange(0, 20))
    return raw_ext(code, payload)


def test_frames_with_extension_types_anywhere_get_errors_and_the_node_keeps_serving(
    runtime: Runtime,
) -> None:
    conn = authed(runtime)
    rng = random.Random(14)
    base = [int(Kind.ASK), 1, "slots", to_parts(Release("slots/w/1"))]
    for _ in range(300):
        frame: list[Any] = [*base[:3], list(base[3])]
        spot = rng.randrange(4 + len(frame[3]))
        where, index = (frame, spot) if spot < 4 else (frame[3], spot - 4)
        where[index] = SPOT  # the envelope's or the message's, replaced by a random ext
        data = msgpack.packb(frame).replace(msgpack.packb(SPOT), _random_ext(rng))
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        conn.send_bytes(data)
        assert error_of(conn).error == "ProtocolError"
    still_serves(conn)
    assert runtime.node.stats.bad_frames >= 300
    # Good values decode and are routed: this Submit is refused only for its target.
    items = [(1, "a"), {frozenset({2})}, 2**99, Decimal("2.50"), date(2000, 1, 2)]
    conn.send_bytes(wire.frame(Kind.ASK, 2, "nowhere", Submit("nowhere", items)))
    assert error_of(conn).error == "NoSuchPool"
    conn.close()
