"""The message codec: the base class, the tag registry, field checks, msgpack in and out.

:mod:`lessor.protocol.messages` declares the messages; this module gives each one, once, at
import time (:func:`seal`):

* an ``__init__`` that checks every field against its type hint (TypeError
  naming the field) and the values msgpack can carry (ValueError), then runs the
  class's own value rules (its ``__post_init__``, if it has one);
* an encoder ``msg -> [tag, field, ...]`` and a decoder back, which calls the
  constructor: a frame is accepted exactly when the same message could be made
  in-process.

The checks are generated as inline Python (``type(v) is str``) from our own type
hints: construction and decoding run on every request.

Typed fields hold exactly their types; ``Any`` fields carry any value of
:mod:`lessor.protocol.values` (tuples, sets, dates, Decimals...) and keep its type.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, Union, cast

from lessor.errors import ProtocolError
from lessor.protocol.values import packb, unpackb

__all__ = [
    "Message",
    "decode",
    "encode",
    "from_parts",
    "message",
    "one_of",
    "pack",
    "seal",
    "seconds",
    "to_parts",
    "unchecked",
    "unpack",
]

#: The integers msgpack carries.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


class Message:
    """Base of all messages; ``TAG`` is the stable wire tag.

    Every field is checked where a message is made, in-process or decoded from a
    frame: a wrong type raises TypeError, a wrong value ValueError, each naming the
    field. A class adds value rules in its own ``__post_init__``.
    """

    __slots__ = ()
    TAG: ClassVar[int]

    def __post_init__(self) -> None:  # a class's own value rules; seal() runs them
        pass


_M = TypeVar("_M", bound=type[Message])
_T = TypeVar("_T", bound=Message)
_REGISTRY: dict[int, type[Message]] = {}
_FIELDS: dict[type[Message], tuple[str, ...]] = {}


def message(tag: int) -> Callable[[_M], _M]:
    """Register a message class under a stable wire tag."""

    def register(cls: _M) -> _M:
        if tag in _REGISTRY:
            raise RuntimeError(f"tag {tag} used by {_REGISTRY[tag].__name__} and {cls.__name__}")
        cls.TAG = tag
        _REGISTRY[tag] = cls
        _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return cls

    return register


def one_of(msg: Message, name: str, allowed: tuple[Any, ...]) -> None:
    """A value rule: field ``name`` is one of ``allowed`` (ValueError naming it)."""
    if (value := getattr(msg, name)) not in allowed:
        raise ValueError(f"{type(msg).__name__}.{name} must be one of {allowed}, got {value!r}")


def seconds(msg: Message, name: str, value: float | None) -> None:
    """A value rule for a duration: a finite number of seconds > 0 (None: a default)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{type(msg).__name__}.{name} must be a finite number > 0 or None, got {value!r}"
        )


# -- field checks ----------------------------------------------------------------------

_Check = Callable[[Any], bool]


def _any(_value: Any) -> bool:
    return True


def _compile(hint: Any) -> _Check:
    """A field's type hint as a predicate on types alone (values are ``_value_test``'s)."""
    if hint is Any:
        return _any
    if hint is type(None):
        return lambda v: v is None
    if hint in (bool, int, str, bytes):
        return lambda v: type(v) is hint
    if hint is float:
        return lambda v: type(v) in (int, float)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        checks = tuple(_compile(a) for a in args)
        return lambda v: any(c(v) for c in checks)
    if origin is list:
        if args[0] is Any:  # (no per-item walk: a Submit carries hundreds of items)
            return lambda v: type(v) is list
        item = _compile(args[0])
        return lambda v: type(v) is list and all(item(x) for x in v)
    if origin is dict:
        key, val = _compile(args[0]), _compile(args[1])
        return lambda v: type(v) is dict and all(key(k) and val(x) for k, x in v.items())
    raise TypeError(f"message fields must be plain types, not {hint!r}")


def _type_test(hint: Any, var: str, index: int) -> str:
    """The same test as ``_compile(hint)``, as a Python expression on ``var``.

    The common hints become inline tests; anything else calls the compiled
    predicate ``_c{index}``.
    """
    if hint is Any:
        return "True"
    if hint is type(None):
        return f"{var} is None"
    if hint in (bool, int, str, bytes):
        return f"type({var}) is {hint.__name__}"
    if hint is float:
        return f"(type({var}) is float or type({var}) is int)"
    if typing.get_origin(hint) in (Union, types.UnionType):
        return "(" + " or ".join(_type_test(a, var, index) for a in typing.get_args(hint)) + ")"
    return f"_c{index}({var})"


def _value_test(hint: Any, var: str, index: int) -> str:
    """For a value that passed its type test: can msgpack carry it and compare it equal?"""
    if hint is int:
        return f"{INT_MIN} <= {var} <= {INT_MAX}"
    if hint is float:  # not NaN; an int in a float field must fit msgpack too
        return f"({var} == {var} if type({var}) is float else {INT_MIN} <= {var} <= {INT_MAX})"
    if typing.get_origin(hint) in (Union, types.UnionType):
        parts = [(_type_test(a, var, index), _value_test(a, var, index))
                 for a in typing.get_args(hint)]  # fmt: skip
        if all(value == "True" for _, value in parts):
            return "True"
        return "(" + " or ".join(f"({t} and {v})" for t, v in parts) + ")"
    return "True"


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if hint is int:
        return "an int (not a bool)"
    if hint is float:
        return "a number (not a bool)"
    return getattr(hint, "__name__", repr(hint))


def _wrong_type(cls: type[Message], name: str, value: Any, wanted: str) -> TypeError:
    return TypeError(f"{cls.__name__}.{name} must be {wanted}, got {value!r}")


def _wrong_value(cls: type[Message], name: str, value: Any) -> ValueError:
    return ValueError(f"{cls.__name__}.{name}: {value!r} cannot travel (NaN or too large)")


def _initializer(cls: type[Message]) -> Callable[..., None]:
    """Generate ``__init__``: check each argument's type and value, store it, run the rules.

    Stores go through the slots' own descriptors: a frozen dataclass's
    ``object.__setattr__`` per field made a Lease cost several microseconds, and
    one is made on every grant.
    """
    fields, hints = _FIELDS[cls], typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    extra = cls.__dict__.get("__post_init__")
    scope: dict[str, Any] = {"_cls": cls, "_wrong_type": _wrong_type,
                             "_wrong_value": _wrong_value, "_extra": extra}  # fmt: skip
    params, body = ["self"], []
    for i, name in enumerate(fields):
        if name in ("self", *scope) or not name.isidentifier():  # pragma: no cover
            raise TypeError(f"{cls.__name__}: field name {name!r} cannot be a parameter")
        default = defaults[name]
        if default is dataclasses.MISSING:
            params.append(name)
        else:
            scope[f"_d{i}"] = default
            params.append(f"{name}=_d{i}")
        hint = hints[name]
        scope[f"_c{i}"] = _compile(hint)
        scope[f"_s{i}"] = getattr(cls, name).__set__  # the slot's member descriptor
        test, value = _type_test(hint, name, i), _value_test(hint, name, i)
        if test != "True":
            body += [
                f"    if not {test}:",
                f"        raise _wrong_type(_cls, {name!r}, {name}, {_describe(hint)!r})",
            ]
        if value != "True":
            body += [f"    if not {value}:", f"        raise _wrong_value(_cls, {name!r}, {name})"]
    body += [f"    _s{i}(self, {name})" for i, name in enumerate(fields)]
    if extra is not None:
        body.append("    _extra(self)")
    source = "\n".join([f"def __init__({', '.join(params)}):", *body, "    pass"])
    exec(source, scope)  # the source is built from our own type hints only
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def unchecked(cls: type[_T]) -> Callable[..., _T]:
    """A constructor of ``cls`` that skips the field checks, for values that passed them.

    For the one hot copy: a cached lease lent again is the same lease with a new
    ``granted_at`` (a monotonic time), and the checks cost more than the copy.
    """
    fields = _FIELDS[cast(type[Message], cls)]
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for i, name in enumerate(fields):
        scope[f"_s{i}"] = getattr(cls, name).__set__
    args = ", ".join(fields)
    body = "".join(f"    _s{i}(self, {name})\n" for i, name in enumerate(fields))
    source = f"def build({args}):\n    self = _new(_cls)\n{body}    return self\n"
    exec(source, scope)  # the source is built from our own field names only
    build: Callable[..., _T] = scope["build"]
    return build


# -- wire form -------------------------------------------------------------------------


def _decoder(cls: type[Message]) -> Callable[[list[Any]], Message]:
    """Generate ``[tag, field, ...] -> cls``: the constructor checks every field."""
    arity = len(_FIELDS[cls])
    args = ", ".join(f"obj[{i}]" for i in range(1, arity + 1))
    scope: dict[str, Any] = {"cls": cls, "_arity": _arity, "ProtocolError": ProtocolError}
    source = "\n".join([
        "def decode(obj):",
        f"    if len(obj) != {arity + 1}:",
        "        raise _arity(cls, len(obj) - 1)",
        "    try:",
        f"        return cls({args})",
        "    except (TypeError, ValueError) as exc:",
        "        raise ProtocolError(f'invalid {cls.__name__}: {exc}') from exc",
    ])  # fmt: skip
    exec(source, scope)
    decode: Callable[[list[Any]], Message] = scope["decode"]
    return decode


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


def seal() -> None:
    """Give every registered class its field checks, encoder and decoder (once, at import)."""
    for cls in _REGISTRY.values():
        if cls not in _ENCODERS:
            setattr(cls, "__init__", _initializer(cls))  # noqa: B010 - no method-assign
            _DECODERS[cls.TAG] = _decoder(cls)
            _ENCODERS[cls] = _encoder(cls)


def to_parts(msg: Message) -> list[Any]:
    """The plain ``[tag, field, ...]`` form of a message, for embedding in a larger frame."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise ProtocolError(f"not a lessor message: {type(msg).__name__}")
    return encoder(msg)


def pack(obj: Any, what: str = "frame") -> bytes:
    """msgpack with lessor's value types (:mod:`lessor.protocol.values`); anything that
    cannot travel raises ProtocolError naming ``what`` and the offending type."""
    try:
        return packb(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {what}: {exc}") from exc


def unpack(data: bytes) -> Any:
    """msgpack bytes -> values; malformed input or a bad value raises ProtocolError."""
    try:
        return unpackb(data)
    except ProtocolError:  # a bad value, already named by the values' ext_hook
        raise
    except Exception as exc:  # msgpack raises a zoo: ExtraData, FormatError, ValueError...
        raise ProtocolError(f"not a msgpack frame: {exc}") from exc


def encode(msg: Message) -> bytes:
    """Message -> msgpack frame. Raises ProtocolError for a non-msgpack-safe field."""
    return pack(to_parts(msg), type(msg).__name__)


def decode(data: bytes) -> Message:
    """msgpack frame -> Message. Anything malformed raises ProtocolError, never more."""
    return from_parts(unpack(data))


def from_parts(obj: Any) -> Message:
    """``[tag, field, ...]`` -> Message, checking every field."""
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise ProtocolError("a frame must be an array starting with an integer tag")
    decoder = _DECODERS.get(obj[0])
    if decoder is None:
        raise ProtocolError(f"unknown message tag {obj[0]}")
    return decoder(obj)
