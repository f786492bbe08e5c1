"""Typed values on the wire: msgpack extension types for the common Python values.

msgpack alone carries None, bool, 64-bit ints, float, str, bytes, list and dict: a
tuple came back a list and a date could not travel at all. Each value type below
gets one extension type. The codes are stable: never renumber one, only add.

=====  ===========================  ================================================
code   type                         payload
=====  ===========================  ================================================
1      tuple                        msgpack array of the items
2      set                          msgpack array of the items
3      frozenset                    msgpack array of the items
4      int beyond 64 bits           two's complement, big-endian
5      complex                      ``>dd``: real, imag
6      decimal.Decimal              ``str(d)`` (ASCII; decoded only if canonical)
7      uuid.UUID                    its 16 bytes
8      datetime.date                ``>HBB``: year, month, day
9      datetime.time                ``>BBBIB`` (hour .. microsecond, fold) + zone
10     datetime.datetime            ``>HBBBBBIB`` (year .. microsecond, fold) + zone
11     datetime.timedelta           ``>iII``: days, seconds, microseconds
=====  ===========================  ================================================

A zone is empty (naive), ``\\x01`` + ``>q`` offset in microseconds (a
``datetime.timezone`` without a name), ``\\x02`` + offset + UTF-8 name, or ``\\x03`` +
UTF-8 key (a ``zoneinfo.ZoneInfo``).

Why not pickle: a frame is built back from these parts only; nothing in it is
unpickled, evaluated or imported, so a peer that stole a worker's key still cannot
run code here. Types are matched exactly (``strict_types``): a subclass (an IntEnum,
a namedtuple, an OrderedDict) is refused naming its type, never silently flattened.
See docs/values.md.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import struct
import uuid
import zoneinfo
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any

import msgpack

from lessor.errors import ProtocolError

__all__ = ["CODES", "DECIMAL_EXPONENT", "MAX_DEPTH", "packb", "refusal", "unpackb"]

#: Tuples, sets and frozensets nest at most this deep (inside one another, at any
#: depth of lists and dicts). Each level costs a nested msgpack call and ~40 KB of C
#: stack when read: unbounded, a hostile frame of nested tuples crashes the process.
MAX_DEPTH = 16
#: A Decimal's exponent stays within the default context's range: ``int(d)`` or
#: ``f"{d:f}"`` of ``Decimal("1E+999999999")`` would take the receiver's memory.
DECIMAL_EXPONENT = 999_999

TUPLE, SET, FROZENSET, BIGINT, COMPLEX, DECIMAL, UUID = 1, 2, 3, 4, 5, 6, 7
DATE, TIME, DATETIME, TIMEDELTA = 8, 9, 10, 11
CODES: dict[type, int] = {
    tuple: TUPLE, set: SET, frozenset: FROZENSET, int: BIGINT, complex: COMPLEX,
    Decimal: DECIMAL, uuid.UUID: UUID, date: DATE, time: TIME, datetime: DATETIME,
    timedelta: TIMEDELTA,
}  # fmt: skip
_NAMES = {code: kind.__name__ for kind, code in CODES.items()}
_NAMES[BIGINT] = "int beyond 64 bits"
_CONTAINERS: dict[int, Callable[[list[Any]], Any]] = {TUPLE: tuple, SET: set, FROZENSET: frozenset}

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what msgpack carries itself
_COMPLEX, _DATE, _TIMEDELTA = struct.Struct(">dd"), struct.Struct(">HBB"), struct.Struct(">iII")
_TIME, _DATETIME, _OFFSET = struct.Struct(">BBBIB"), struct.Struct(">HBBBBBIB"), struct.Struct(">q")
_CARRIED = (
    "None, bool, int, float, str, bytes, list, dict, tuple, set, frozenset, complex, "
    "Decimal, UUID, date, time, datetime, timedelta"
)
_BASES = (bool, int, float, str, bytes, list, dict, *CODES)


# -- sending ---------------------------------------------------------------------------


def refusal(value: Any) -> str:
    """Why ``value`` cannot travel, naming its type and what to send instead."""
    kind = type(value)
    hint: str | None
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        hint = "it is a namedtuple, send tuple(x) or x._asdict()"
    elif dataclasses.is_dataclass(value):
        hint = "it is a dataclass, send dataclasses.astuple(x) or dataclasses.asdict(x)"
    else:
        base = next((b.__name__ for b in kind.__mro__[1:] if b in _BASES), None)
        hint = None if base is None else f"it is a {base} subclass, convert it to {base} first"
        if isinstance(value, enum.Enum):
            hint = "it is an enum, send x.value"  # (str() of a (str, Enum) member is its name)
    return (
        f"cannot send a {kind.__qualname__} ({kind.__module__}.{kind.__qualname__})"
        f": {'' if hint is None else f'{hint}; '}lessor carries only {_CARRIED}; "
        "see docs/values.md"
    )


def _zone(value: date | time, zone: tzinfo | None) -> bytes:
    if zone is None:
        return b""
    if type(zone) is timezone:
        args = zone.__getinitargs__()  # type: ignore[attr-defined]  # (offset,) or (offset, name)
        offset: timedelta = args[0]
        micros = _OFFSET.pack((offset.days * 86400 + offset.seconds) * 10**6 + offset.microseconds)
        return b"\x01" + micros if len(args) == 1 else b"\x02" + micros + args[1].encode()
    if type(zone) is zoneinfo.ZoneInfo:
        if zone.key in _zone_keys():  # (what a receiver will look the key up in)
            return b"\x03" + zone.key.encode()
        raise ValueError(
            f"cannot send a {type(value).__name__} in ZoneInfo {zone.key!r}: lessor carries the "
            "keys of zoneinfo.available_timezones(); see docs/values.md"
        )
    kind = type(zone)
    raise TypeError(
        f"cannot send a {type(value).__name__} with a tzinfo of type {kind.__qualname__} "
        f"({kind.__module__}.{kind.__qualname__}): lessor carries datetime.timezone and "
        "zoneinfo.ZoneInfo only; see docs/values.md"
    )


@functools.cache
def _zone_keys() -> frozenset[str]:
    """The zones this process knows (read once, ~30 ms): a frame's key is looked up
    here, so it never chooses a file to open or a ``tzdata`` module to import."""
    return frozenset(zoneinfo.available_timezones())


def _decimal(value: Decimal) -> bytes:
    exponent = value.as_tuple().exponent
    if type(exponent) is int and not -DECIMAL_EXPONENT <= exponent <= DECIMAL_EXPONENT:
        raise ValueError(f"cannot send a Decimal with exponent {exponent}: lessor carries "
                         f"exponents within ±{DECIMAL_EXPONENT}; see docs/values.md")  # fmt: skip
    return str(value).encode("ascii")


def _time(value: time) -> bytes:
    parts = value.hour, value.minute, value.second, value.microsecond, value.fold
    return _TIME.pack(*parts) + _zone(value, value.tzinfo)


def _datetime(value: datetime) -> bytes:
    parts = (value.year, value.month, value.day, value.hour, value.minute, value.second,
             value.microsecond, value.fold)  # fmt: skip
    return _DATETIME.pack(*parts) + _zone(value, value.tzinfo)


_ENCODERS: dict[type, tuple[int, Callable[[Any], bytes]]] = {
    # (an int reaches default() only when msgpack finds it out of its range)
    int: (BIGINT, lambda v: v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)),
    complex: (COMPLEX, lambda v: _COMPLEX.pack(v.real, v.imag)),
    Decimal: (DECIMAL, _decimal),
    uuid.UUID: (UUID, lambda v: v.bytes),
    date: (DATE, lambda v: _DATE.pack(v.year, v.month, v.day)),
    time: (TIME, _time),
    datetime: (DATETIME, _datetime),
    timedelta: (TIMEDELTA, lambda v: _TIMEDELTA.pack(v.days, v.seconds, v.microseconds)),
}


def _default_at(depth: int) -> Callable[[Any], msgpack.ExtType]:
    """msgpack's ``default`` for values ``depth`` containers deep: called only for what
    msgpack cannot carry itself, so plain frames never pay for it."""

    def default(value: Any) -> msgpack.ExtType:
        kind = type(value)
        if kind is tuple or kind is set or kind is frozenset:
            if depth >= MAX_DEPTH:
                raise ValueError(f"tuples, sets and frozensets nest more than {MAX_DEPTH} deep")
            return msgpack.ExtType(CODES[kind], _pack_at(depth + 1, list(value)))
        entry = _ENCODERS.get(kind)
        if entry is None:
            raise TypeError(refusal(value))
        return msgpack.ExtType(entry[0], entry[1](value))

    return default


_DEFAULTS = [_default_at(depth) for depth in range(MAX_DEPTH + 1)]
#: Idle packers per depth: ``msgpack.packb`` builds a Packer per call, ~0.6 of its
#: ~0.9 µs for a Lease frame. A packer is taken by one call at a time (list pop and
#: append are atomic), so threads and re-entry (a tuple's items) never share one.
_IDLE: list[list[Any]] = [[] for _ in range(MAX_DEPTH + 1)]
_KEEP = 1 << 16  # a packer that grew for a larger frame is left to the collector


def _pack_at(depth: int, value: Any) -> bytes:
    idle = _IDLE[depth]
    try:
        packer = idle.pop()
    except IndexError:
        packer = msgpack.Packer(
            use_bin_type=True, strict_types=True, default=_DEFAULTS[depth], buf_size=1024
        )
    data: bytes = packer.pack(value)  # (on an error the packer is dropped)
    if len(data) <= _KEEP:
        idle.append(packer)
    return data


def packb(value: Any) -> bytes:
    """``value`` as msgpack with lessor's extension types.

    Raises TypeError (a type that does not travel, named) or ValueError (too deep, too
    large, an unencodable str); the codec turns either into ProtocolError.
    """
    return _pack_at(0, value)


# -- receiving -------------------------------------------------------------------------


def _zone_of(tail: bytes) -> tzinfo | None:
    if not tail:
        return None
    kind, rest = tail[0], tail[1:]
    if kind in (1, 2):
        (micros,) = _OFFSET.unpack_from(rest)
        if kind == 1 and len(rest) != _OFFSET.size:
            raise ValueError("trailing bytes after the offset")
        offset = timedelta(microseconds=micros)
        return timezone(offset) if kind == 1 else timezone(offset, rest[_OFFSET.size :].decode())
    if kind == 3:
        key = rest.decode()
        if key not in _zone_keys():
            raise ValueError(f"time zone {key[:80]!r} is not in this process's tz database")
        return zoneinfo.ZoneInfo(key)
    raise ValueError(f"unknown zone kind {kind}")


def _bigint(data: bytes) -> int:
    value = int.from_bytes(data, "big", signed=True)
    if _INT_MIN <= value <= _INT_MAX:
        raise ValueError("an int msgpack carries itself")
    return value


def _decimal_of(data: bytes) -> Decimal:
    text = data.decode("ascii")
    value = Decimal(text)
    if str(value) != text:  # one form per value: no spaces, underscores, other digits
        raise ValueError("not in canonical form")
    exponent = value.as_tuple().exponent
    if type(exponent) is int and not -DECIMAL_EXPONENT <= exponent <= DECIMAL_EXPONENT:
        raise ValueError(f"exponent {exponent} beyond ±{DECIMAL_EXPONENT}")
    return value


def _time_of(data: bytes) -> time:
    hour, minute, second, micro, fold = _TIME.unpack_from(data)
    return time(hour, minute, second, micro, _zone_of(data[_TIME.size :]), fold=fold)


def _datetime_of(data: bytes) -> datetime:
    year, month, day, hour, minute, second, micro, fold = _DATETIME.unpack_from(data)
    zone = _zone_of(data[_DATETIME.size :])
    return datetime(year, month, day, hour, minute, second, micro, zone, fold=fold)


def _timedelta_of(data: bytes) -> timedelta:
    days, seconds, micros = _TIMEDELTA.unpack(data)
    if seconds >= 86400 or micros >= 10**6:
        raise ValueError("not in canonical form")
    return timedelta(days, seconds, micros)


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    BIGINT: _bigint,
    COMPLEX: lambda data: complex(*_COMPLEX.unpack(data)),
    DECIMAL: _decimal_of,
    UUID: lambda data: uuid.UUID(bytes=data),
    DATE: lambda data: date(*_DATE.unpack(data)),
    TIME: _time_of,
    DATETIME: _datetime_of,
    TIMEDELTA: _timedelta_of,
}


def _hook_at(depth: int) -> Callable[[int, bytes], Any]:
    """msgpack's ``ext_hook`` for values ``depth`` containers deep: any failure is a
    ProtocolError naming the value type (or the unknown code)."""

    def ext_hook(code: int, data: bytes) -> Any:
        make = _CONTAINERS.get(code)
        if make is not None:
            if depth >= MAX_DEPTH:
                raise ProtocolError(
                    f"frame nests tuples, sets and frozensets more than {MAX_DEPTH} deep"
                )
            try:
                items = _unpack_at(depth + 1, data)
                if type(items) is not list:
                    raise ValueError(f"items are a {type(items).__name__}, not an array")
                return make(items)
            except ProtocolError:
                raise
            except Exception as exc:
                raise ProtocolError(f"frame holds a malformed {_NAMES[code]}: {exc}") from None
        decode = _DECODERS.get(code)
        if decode is None:
            raise ProtocolError(f"frame holds an unknown value type (msgpack ext code {code})")
        try:
            return decode(data)
        except Exception as exc:
            raise ProtocolError(f"frame holds a malformed {_NAMES[code]}: {exc}") from None

    return ext_hook


_HOOKS = [_hook_at(depth) for depth in range(MAX_DEPTH + 1)]
_HOOK = _HOOKS[0]


def _unpack_at(depth: int, data: bytes) -> Any:
    return msgpack.unpackb(
        data, raw=False, use_list=True, strict_map_key=False, ext_hook=_HOOKS[depth]
    )


def unpackb(data: bytes) -> Any:
    """msgpack bytes -> values. A bad value raises ProtocolError; malformed msgpack
    raises msgpack's own errors, which the codec turns into ProtocolError."""
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False, ext_hook=_HOOK)
