"""Every message lessor actors exchange, and the one codec that puts them on a wire.

Messages are frozen, slotted dataclasses with plain fields (str, int, float, bool,
bytes, None, lists and dicts of these), so each one is msgpack-safe by construction.
Who sent a message and where its reply goes live in the envelope, never in the
message: the same ``Acquire`` travels through a pykka inbox in-process and as a
msgpack frame between processes.

On the wire a message is the msgpack array ``[tag, field1, field2, ...]``. Tags are
stable integers: never renumber one, only add new ones.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union

import msgpack

from lessor.errors import ProtocolError

__all__ = [
    "Acquire",
    "Drain",
    "ErrorReply",
    "GetStats",
    "Hello",
    "Lease",
    "LeaseExpired",
    "Message",
    "NextTask",
    "PoolStats",
    "Release",
    "Renew",
    "ReturnParked",
    "Task",
    "TaskResult",
    "decode",
    "encode",
    "from_parts",
    "pack",
    "to_parts",
    "unpack",
]


class Message:
    """Base of all messages; ``TAG`` is the stable wire tag."""

    __slots__ = ()
    TAG: ClassVar[int]


_M = TypeVar("_M", bound=type[Message])
_REGISTRY: dict[int, type[Message]] = {}
_FIELDS: dict[type[Message], tuple[str, ...]] = {}


def _message(tag: int) -> Callable[[_M], _M]:
    """Register a message class under a stable wire tag."""

    def register(cls: _M) -> _M:
        if tag in _REGISTRY:
            raise RuntimeError(f"tag {tag} used by {_REGISTRY[tag].__name__} and {cls.__name__}")
        cls.TAG = tag
        _REGISTRY[tag] = cls
        _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return cls

    return register


@_message(1)
@dataclass(frozen=True, slots=True)
class Acquire(Message):
    """Ask a pool for a lease. ``timeout=None`` uses the pool's ``acquire_timeout``.

    Higher ``priority`` is served first; ``ttl`` overrides the pool's ``lease_ttl``.
    """

    pool: str
    timeout: float | None = None
    priority: int = 0
    ttl: float | None = None

    def __post_init__(self) -> None:
        _positive("timeout", self.timeout)
        _positive("ttl", self.ttl)


@_message(2)
@dataclass(frozen=True, slots=True)
class Release(Message):
    """Give a lease back; ``broken=True`` makes the pool destroy the resource."""

    lease_id: str
    broken: bool = False


@_message(3)
@dataclass(frozen=True, slots=True)
class Renew(Message):
    """Push a lease's expiry to ``ttl`` seconds from now; answered with the new Lease."""

    lease_id: str
    ttl: float

    def __post_init__(self) -> None:
        _positive("ttl", self.ttl)


@_message(4)
@dataclass(frozen=True, slots=True)
class Lease(Message):
    """A grant. Times are ``time.monotonic()`` seconds; ``expires_at=None`` never expires.

    In-process ``resource`` may be any object; only msgpack-safe resources can be encoded.
    ``contended`` says others were still waiting for this pool when it was granted: a
    worker that caches leases gives such a lease back on release instead of parking it.
    """

    id: str
    pool: str
    resource: Any
    holder: str
    granted_at: float
    expires_at: float | None
    contended: bool = False


@_message(5)
@dataclass(frozen=True, slots=True)
class GetStats(Message):
    """Ask an actor for a statistics snapshot."""


@_message(6)
@dataclass(frozen=True, slots=True)
class PoolStats(Message):
    """A frozen snapshot of one pool. Gauges and counters are counts; times carry ``_ms``."""

    pool: str
    size: int
    idle: int
    leased: int
    checking: int
    creating: int
    waiting: int
    acquired: int
    released: int
    timeouts: int
    created: int
    destroyed: int
    broken: int
    factory_errors: int
    check_failures: int
    expired: int
    reclaimed: int
    rejected: int
    wait_ms_p50: float
    wait_ms_p95: float
    wait_ms_p99: float
    hold_ms_p50: float
    hold_ms_p95: float
    hold_ms_p99: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS[PoolStats]}


@_message(7)
@dataclass(frozen=True, slots=True)
class LeaseExpired(Message):
    """Pushed to a holder whose lease ran past ``expires_at`` and was reclaimed."""

    lease_id: str
    pool: str


@_message(8)
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First frame on a worker connection, and the node's answer to it."""

    version: int
    worker_id: str
    pid: int


@_message(9)
@dataclass(frozen=True, slots=True)
class Drain(Message):
    """Pushed to workers at shutdown: finish current work, release, exit within ``deadline_s``."""

    deadline_s: float


@_message(10)
@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """A request failed: ``error`` names the lessor error class, ``text`` says why."""

    error: str
    text: str


@_message(11)
@dataclass(frozen=True, slots=True)
class NextTask(Message):
    """A ``Runtime.map`` worker asks for its next item."""

    job: str


@_message(12)
@dataclass(frozen=True, slots=True)
class Task(Message):
    """One item of a ``Runtime.map`` job; ``index == -1`` means there is no more work."""

    index: int
    item: Any


@_message(13)
@dataclass(frozen=True, slots=True)
class TaskResult(Message):
    """The outcome of one item: ``value`` if ``ok``, else ``error`` (type and message)."""

    job: str
    index: int
    ok: bool
    value: Any
    error: str


@_message(14)
@dataclass(frozen=True, slots=True)
class ReturnParked(Message):
    """Pushed by a pool that has a waiter and nothing free: give back parked leases."""

    pool: str


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{name} must be a number > 0 or None, got {value!r}")


# -- codec ---------------------------------------------------------------------------

_Check = Callable[[Any], bool]


def _any(_value: Any) -> bool:
    return True


def _compile(hint: Any) -> _Check:
    """Turn a field's type hint into a predicate, once, at import time."""
    if hint is Any:
        return _any
    if hint is type(None):
        return lambda v: v is None
    if hint is bool:
        return lambda v: type(v) is bool
    if hint is int:
        return lambda v: type(v) is int
    if hint is float:
        return lambda v: type(v) in (int, float) and not math.isnan(v)
    if hint in (str, bytes):
        return lambda v: type(v) is hint
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        checks = tuple(_compile(a) for a in args)
        return lambda v: any(c(v) for c in checks)
    if origin is list:
        item = _compile(args[0])
        return lambda v: type(v) is list and all(item(x) for x in v)
    if origin is dict:
        key, val = _compile(args[0]), _compile(args[1])
        return lambda v: type(v) is dict and all(key(k) and val(x) for k, x in v.items())
    raise TypeError(f"message fields must be plain types, not {hint!r}")


def _inline(hint: Any, var: str, index: int) -> str:
    """The same test as ``_compile(hint)``, as a Python expression on ``var``.

    Decoding runs on every frame, so the common hints become inline tests; anything
    else calls its compiled predicate ``_c{index}``.
    """
    if hint is Any:
        return "True"
    if hint is type(None):
        return f"{var} is None"
    if hint in (bool, int, str, bytes):
        return f"type({var}) is {hint.__name__}"
    if hint is float:
        return f"(type({var}) is float and {var} == {var} or type({var}) is int)"
    if typing.get_origin(hint) in (Union, types.UnionType):
        return "(" + " or ".join(_inline(a, var, index) for a in typing.get_args(hint)) + ")"
    return f"_c{index}({var})"


def _decoder(cls: type[Message]) -> Callable[[list[Any]], Message]:
    """Generate ``[tag, field, ...] -> cls`` with every field's type checked inline."""
    fields, hints = _FIELDS[cls], typing.get_type_hints(cls)
    names = [f"a{i}" for i in range(len(fields))]
    scope: dict[str, Any] = {"cls": cls, "_bad": _bad, "_arity": _arity}
    lines = [
        "def decode(obj):",
        f"    if len(obj) != {len(fields) + 1}:",
        "        raise _arity(cls, len(obj) - 1)",
        f"    _, {''.join(n + ', ' for n in names)}= obj" if names else "    pass",
    ]
    for i, (name, var) in enumerate(zip(fields, names, strict=True)):
        scope[f"_c{i}"] = _compile(hints[name])
        test = _inline(hints[name], var, i)
        if test != "True":
            lines += [f"    if not {test}:", f"        raise _bad(cls, {name!r}, {var})"]
    lines += [
        "    try:",
        f"        return cls({', '.join(names)})",
        "    except (TypeError, ValueError) as exc:",
        "        raise ProtocolError(f'invalid {cls.__name__}: {exc}') from exc",
    ]
    scope["ProtocolError"] = ProtocolError
    exec("\n".join(lines), scope)  # the source is built from our own type hints only
    decode: Callable[[list[Any]], Message] = scope["decode"]
    return decode


def _bad(cls: type[Message], name: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{cls.__name__}.{name}: bad value {value!r}")


def _arity(cls: type[Message], got: int) -> ProtocolError:
    return ProtocolError(f"{cls.__name__} takes {len(_FIELDS[cls])} fields, got {got}")


def _encoder(cls: type[Message]) -> Callable[[Message], list[Any]]:
    getter = operator.attrgetter(*_FIELDS[cls]) if _FIELDS[cls] else None
    tag = cls.TAG
    if getter is None:
        return lambda _msg: [tag]
    if len(_FIELDS[cls]) == 1:
        return lambda msg: [tag, getter(msg)]
    return lambda msg: [tag, *getter(msg)]


_DECODERS: dict[int, Callable[[list[Any]], Message]] = {}
_ENCODERS: dict[type[Message], Callable[[Message], list[Any]]] = {}
for _cls in _REGISTRY.values():
    _DECODERS[_cls.TAG] = _decoder(_cls)
    _ENCODERS[_cls] = _encoder(_cls)


def to_parts(msg: Message) -> list[Any]:
    """The plain ``[tag, field, ...]`` form of a message, for embedding in a larger frame."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise ProtocolError(f"not a lessor message: {type(msg).__name__}")
    return encoder(msg)


def pack(obj: Any, what: str = "frame") -> bytes:
    """msgpack with lessor's settings; anything not msgpack-safe raises ProtocolError."""
    try:
        frame: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {what}: {exc}") from exc
    return frame


def unpack(data: bytes) -> Any:
    """msgpack bytes -> plain objects; malformed input raises ProtocolError."""
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises a zoo: ExtraData, FormatError, ValueError...
        raise ProtocolError(f"not a msgpack frame: {exc}") from exc


def encode(msg: Message) -> bytes:
    """Message -> msgpack frame. Raises ProtocolError for a non-msgpack-safe field."""
    return pack(to_parts(msg), type(msg).__name__)


def decode(data: bytes) -> Message:
    """msgpack frame -> Message. Anything malformed raises ProtocolError, never more."""
    return from_parts(unpack(data))


def from_parts(obj: Any) -> Message:
    """``[tag, field, ...]`` -> Message, checking every field's type."""
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise ProtocolError("a frame must be an array starting with an integer tag")
    decoder = _DECODERS.get(obj[0])
    if decoder is None:
        raise ProtocolError(f"unknown message tag {obj[0]}")
    return decoder(obj)
