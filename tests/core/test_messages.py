from __future__ import annotations

import dataclasses
import typing

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lessor
from lessor.errors import LessorError, ProtocolError
from lessor.protocol import messages
from lessor.protocol.messages import (
    Acquire,
    GetStats,
    Lease,
    LeaseExpired,
    PoolStats,
    Release,
    Renew,
    decode,
    encode,
)

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
pos = st.floats(min_value=1e-6, max_value=1e9)
opt_pos = st.none() | pos

every_message = st.one_of(
    st.builds(Acquire, st.text(), opt_pos, st.integers(-100, 100), opt_pos),
    st.builds(Release, st.text(), st.booleans()),
    st.builds(Renew, st.text(), pos),
    st.builds(Lease, st.text(), st.text(), plain, st.text(), st.floats(allow_nan=False),
              st.none() | st.floats(allow_nan=False), st.booleans()),
    st.just(GetStats()),
    st.builds(LeaseExpired, st.text(), st.text()),
    st.builds(PoolStats, st.text(), *[st.integers(0, 10**9)] * 17, *[pos] * 6),
)  # fmt: skip


@given(every_message)
def test_every_message_round_trips(msg: messages.Message) -> None:
    assert decode(encode(msg)) == msg


def test_messages_are_frozen_slotted_with_unique_stable_tags() -> None:
    tags = {
        Acquire: 1, Release: 2, Renew: 3, Lease: 4, GetStats: 5, PoolStats: 6, LeaseExpired: 7,
    }  # fmt: skip
    for cls, tag in tags.items():
        assert tag == cls.TAG  # a changed tag breaks every peer on the wire
        assert "__slots__" in cls.__dict__
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Release("id").broken = True  # type: ignore[misc]


def test_wire_form_is_a_tagged_array() -> None:
    assert msgpack.unpackb(encode(Release("p/e/1", True))) == [2, "p/e/1", True]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (msgpack.packb([99, "x"]), "unknown message tag"),
        (msgpack.packb([2, 5, False]), "Release.lease_id"),
        (msgpack.packb([2, "id", "yes"]), "Release.broken"),
        (msgpack.packb([1, "p", 1.0, True, None]), "Acquire.priority"),
        (msgpack.packb([1, "p", -1.0, 0, None]), "invalid Acquire"),
        (msgpack.packb([2, "id"]), "takes 2 fields"),
        (msgpack.packb([3, "id", 1.0, 7]), "takes 2 fields"),
        (msgpack.packb({"tag": 1}), "array starting with an integer tag"),
        (msgpack.packb([]), "array starting with an integer tag"),
        (msgpack.packb(["1", "p"]), "array starting with an integer tag"),
        (encode(Release("abc"))[:-2], "not a msgpack frame"),
        (b"\xc1", "not a msgpack frame"),
        (b"", "not a msgpack frame"),
        (encode(GetStats()) + b"\x00", "not a msgpack frame"),
        (b"\x80\x04\x95pickle", "not a msgpack frame"),
    ],
)
def test_malformed_frames_raise_protocol_error(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode(data)


@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_protocol_error_only(data: bytes) -> None:
    try:
        msg = decode(data)
    except ProtocolError:
        return
    assert decode(encode(msg)) == msg


def test_in_process_lease_may_carry_any_object_but_only_plain_ones_encode() -> None:
    conn = object()
    lease = Lease("p/e/1", "p", conn, "me", 1.0, None)
    assert lease.resource is conn
    with pytest.raises(ProtocolError, match="cannot encode Lease"):
        encode(lease)
    with pytest.raises(ProtocolError, match="not a lessor message"):
        encode(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "error"),
    [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
     ("1", TypeError), (True, TypeError)],
)  # fmt: skip
def test_acquire_and_renew_reject_bad_numbers_naming_the_field(
    bad: object, error: type[Exception]
) -> None:
    if bad != 0:  # Acquire(timeout=0) is a try: now or PoolExhausted
        with pytest.raises(error, match="timeout"):
            Acquire("p", bad)  # type: ignore[arg-type]
    with pytest.raises(error, match="ttl"):
        Acquire("p", 1.0, ttl=bad)  # type: ignore[arg-type]
    with pytest.raises(error, match="ttl"):
        Renew("id", bad)  # type: ignore[arg-type]


def test_a_zero_acquire_timeout_is_a_try_and_travels() -> None:
    try_now = Acquire("p", 0)
    assert try_now.timeout == 0
    assert decode(encode(try_now)) == try_now


def test_errors_share_one_base_and_are_importable_from_lessor() -> None:
    for name in ("AcquireTimeout", "PoolExhausted", "PoolClosed", "LeaseError", "ProtocolError"):
        assert issubclass(getattr(lessor, name), LessorError)
    for name in ("DoubleRelease", "UnknownLease", "ForeignLease", "StaleLease", "ExpiredLease"):
        assert issubclass(getattr(lessor, name), lessor.LeaseError)


@settings(max_examples=600)
@given(st.sampled_from(sorted(messages._REGISTRY)), st.data())
def test_the_generated_decoders_accept_exactly_what_the_field_types_allow(
    tag: int, data: st.DataObject
) -> None:
    """The fast, generated decoder agrees with the type hints, value for value."""
    cls = messages._REGISTRY[tag]
    fields = messages._FIELDS[cls]
    hints = typing.get_type_hints(cls)
    arity = data.draw(st.sampled_from([len(fields)] * 4 + [len(fields) + 1, 0]))
    values = [data.draw(_value_for(hints[fields[i]]) if i < len(fields) else plain)
              for i in range(arity)]  # fmt: skip
    checks = [messages._compile(hints[name]) for name in fields]
    well_typed = len(values) == len(fields) and all(
        check(v) for check, v in zip(checks, values, strict=True)
    )
    try:
        msg = messages.from_parts([tag, *values])
    except ProtocolError:
        if well_typed:  # only __post_init__ may refuse a well-typed value
            with pytest.raises(ValueError):
                cls(*values)
        return
    assert well_typed
    assert messages.to_parts(msg) == [tag, *values]


def _value_for(hint: object) -> st.SearchStrategy[object]:
    """Mostly values of the field's own type, sometimes anything plain (or a NaN)."""
    numbers = st.floats() | st.just(float("nan")) | st.integers() | st.booleans()
    typed: st.SearchStrategy[object] = plain
    if hint in (str, int, bool, bytes):
        typed = st.from_type(hint)  # type: ignore[arg-type]
    elif hint is float:
        typed = numbers
    elif hint == float | None:
        typed = st.none() | numbers
    return typed | typed | plain


# -- every field is checked where a message is made --------------------------------------

_BIG = 2**63


@pytest.mark.parametrize(
    ("make", "error", "field"),
    [
        (lambda: Acquire("p", 1.0, "high"), TypeError, "Acquire.priority"),  # type: ignore[arg-type]
        (lambda: Acquire("p", 1.0, 1.5), TypeError, "Acquire.priority"),  # type: ignore[arg-type]
        (lambda: Acquire("p", 1.0, None), TypeError, "Acquire.priority"),  # type: ignore[arg-type]
        (lambda: Acquire("p", 1.0, True), TypeError, "Acquire.priority"),
        (lambda: Acquire("p", 1.0, float("inf")), TypeError, "Acquire.priority"),  # type: ignore[arg-type]
        (lambda: Acquire("p", 1.0, _BIG), ValueError, "Acquire.priority"),
        (lambda: Acquire("p", 1.0, -_BIG - 1), ValueError, "Acquire.priority"),
        (lambda: Acquire(5), TypeError, "Acquire.pool"),  # type: ignore[arg-type]
        (lambda: Acquire("p", ttl=float("nan")), ValueError, "Acquire.ttl"),
        (lambda: Release(5), TypeError, "Release.lease_id"),  # type: ignore[arg-type]
        (lambda: Release("x", 1), TypeError, "Release.broken"),  # type: ignore[arg-type]
        (lambda: Release("x", None), TypeError, "Release.broken"),  # type: ignore[arg-type]
        (lambda: Renew(None, 1.0), TypeError, "Renew.lease_id"),  # type: ignore[arg-type]
        (lambda: Renew("x", True), TypeError, "Renew.ttl"),
        (lambda: LeaseExpired("x", 1), TypeError, "LeaseExpired.pool"),  # type: ignore[arg-type]
        (lambda: messages.Describe(3), TypeError, "Describe.pool"),  # type: ignore[arg-type]
        (lambda: messages.PoolInfo("p", 0, 3), ValueError, "PoolInfo.acquire_timeout"),
        (lambda: messages.PoolInfo("p", 1.0, 0), ValueError, "PoolInfo.max_size"),
        (lambda: messages.PoolInfo("p", 1.0, 2.5), TypeError, "PoolInfo.max_size"),  # type: ignore[arg-type]
        (lambda: messages.Task("1", None), TypeError, "Task.index"),  # type: ignore[arg-type]
        (lambda: messages.Task(2**64, None), ValueError, "Task.index"),
        (lambda: messages.TaskResult("j", 1, "yes", None, ""), TypeError, "TaskResult.ok"),  # type: ignore[arg-type]
        (lambda: messages.Hello("3", "w", 1), TypeError, "Hello.version"),  # type: ignore[arg-type]
        (lambda: messages.Drain(float("nan")), ValueError, "Drain.deadline_s"),
        (lambda: Lease("i", "p", object(), "h", 1.0, "never"), TypeError, "Lease.expires_at"),  # type: ignore[arg-type]
    ],
)  # fmt: skip
def test_every_field_is_checked_where_the_message_is_made(
    make: typing.Callable[[], object], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        make()


def test_describe_and_pool_info_have_new_stable_tags() -> None:
    assert messages.Describe.TAG == 15 and messages.PoolInfo.TAG == 16
    info = messages.PoolInfo("p", 120.0, 4)
    assert decode(encode(info)) == info
    assert msgpack.unpackb(encode(messages.Describe("p"))) == [15, "p"]


@settings(max_examples=800)
@given(st.sampled_from(sorted(messages._REGISTRY)), st.data())
def test_the_constructor_and_the_decoder_accept_the_same_values(
    tag: int, data: st.DataObject
) -> None:
    """In-process and on the wire, one rule: what can be made round-trips, nothing else decodes."""
    cls = messages._REGISTRY[tag]
    hints = typing.get_type_hints(cls)
    values = [data.draw(_value_for(hints[name])) for name in messages._FIELDS[cls]]
    try:
        made = cls(*values)
    except (TypeError, ValueError):
        made = None
    try:
        decoded = messages.from_parts([tag, *values])
    except ProtocolError:
        decoded = None
    assert (made is None) == (decoded is None), (values, made, decoded)
    if made is not None:
        assert decoded == made
        assert decode(encode(made)) == made
