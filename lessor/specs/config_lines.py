"""Where each key of a TOML text is defined, and the checks whose errors name that line.

``tomllib`` gives values but no positions, so :func:`key_lines` scans the text (once
``tomllib`` accepted it) for table headers, keys (bare, quoted, dotted) and inline
tables' keys, skipping strings, arrays and comments. A table made implicitly (``[a.b]``
makes ``a``) has the first line that mentions it, until a line defines it. On text it
does not follow the scanner keeps what it found: a key it missed gets its nearest
table's line (:func:`line_of`). :class:`Reporter` notes mistakes with those lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = ["KeyPath", "Reporter", "dotted", "fields_of", "import_object", "key_lines", "line_of",
           "show", "syntax_error", "tomllib"]  # fmt: skip

T = TypeVar("T")

#: A key's path from the document's root: table names, key names, list indexes.
KeyPath = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}$")
SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SCALAR_END = frozenset(" \t\r\n,]}#")
_TIME = re.compile(r" \d")
_REF = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def fields_of(cls: Any) -> set[str]:
    """The fields a dataclass is made with."""
    return {f.name for f in dataclasses.fields(cls) if f.init}


def dotted(path: KeyPath) -> str:
    """``pools."a.b".max_size``, ``breakers.api.record_errors[1]``: a path as TOML spells it."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{text}" if out else text
    return out


def line_of(lines: dict[tuple[str, ...], int], path: KeyPath) -> int:
    """The line defining ``path``, else its nearest enclosing table's (1 for none)."""
    keys = tuple(p for p in path if isinstance(p, str))  # a list item: its list's line
    for end in range(len(keys), 0, -1):
        if keys[:end] in lines:
            return lines[keys[:end]]
    return 1


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Every key path defined in ``text`` (valid TOML), with its 1-based line."""
    scanner = _Scanner(text)
    with contextlib.suppress(IndexError, ValueError, tomllib.TOMLDecodeError):
        scanner.document()  # on text it does not follow, what it found is still right
    return scanner.lines


def import_object(ref: str) -> Any:
    """The object ``"package.module:name"`` names (``name`` may be dotted), by importing and
    looking attributes up only (nothing is evaluated); ValueError saying what is wrong."""
    if not isinstance(ref, str) or not _REF.fullmatch(ref):
        raise ValueError(f"must be 'package.module:name', got {ref!r}")
    module_name, _, attrs = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # the user's module failed while importing
        raise ValueError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    for attr in attrs.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"{module_name!r} has no attribute {attrs!r}")
        obj = getattr(obj, attr)
    return obj


def syntax_error(exc: tomllib.TOMLDecodeError, text: str) -> tuple[int, str, str]:
    """(line, "", why) of a TOML syntax error, from tomllib's attributes or its message."""
    message = str(getattr(exc, "msg", "") or exc)
    line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    at = re.search(r"\s*\(at (line (\d+), column (\d+)|end of document)\)", message)
    if at is not None:
        message = message[: at.start()]
        if line is None:
            line = int(at.group(2)) if at.group(2) else text.count("\n") + 1
            column = int(at.group(3)) if at.group(3) else None
    where = f" (column {column})" if column else ""
    return line or 1, "", f"invalid TOML: {message}{where}"


class Reporter:
    """Notes mistakes as ``(line, dotted key, why)`` in ``errors``, and the checks that
    find them: a table's keys, a spec's own ValueError put on its key, an imported name,
    a call with a table as keyword arguments."""

    def __init__(self, lines: dict[tuple[str, ...], int]) -> None:
        self.lines = lines
        self.errors: list[tuple[int, str, str]] = []

    def fail(self, path: KeyPath, why: str) -> None:
        self.errors.append((line_of(self.lines, path), dotted(path), why))

    def table(self, path: KeyPath, value: Any, allowed: Collection[str],
              required: Collection[str] = ()) -> dict[str, Any] | None:  # fmt: skip
        """``value``'s known keys, if it is a table that has the required ones."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a table, got {show(value)}")
            return None
        expected = ", ".join(sorted(allowed))
        unknown = [key for key in value if key not in allowed]
        for key in unknown:
            self.fail((*path, key), f"unknown key; expected one of {expected}")
        required_ok = set(required) <= value.keys()
        for key in required:
            if key not in value:
                self.fail((*path, key), "missing: this key is required")
        return {k: v for k, v in value.items() if k in allowed} if required_ok else None

    def attempt(self, path: KeyPath, make: Callable[[], T], names: Collection[str],
                keys: Mapping[str, KeyPath] | None = None, what: str = "") -> T | None:  # fmt: skip
        """``make()``; a ValueError or TypeError whose first word is one of ``names``
        (as the specs raise them) is put on that name's key (or ``keys[name]``)."""
        try:
            return make()
        except (ValueError, TypeError) as exc:
            name, _, why = str(exc).partition(" ")
            if name in names and why:
                self.fail((*path, *(keys or {}).get(name, (name,))), why)
            else:
                self.fail(path, f"{what}: {exc}" if what else str(exc))
            return None

    def kwargs(self, cls: Any, body: dict[str, Any],
               skip: Collection[str] = ()) -> dict[str, Any]:  # fmt: skip
        """The spec fields ``body`` gives; ``false`` is None for a field that may be None
        (TOML has no null)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.init and f.name in body and f.name not in skip:
                none = body[f.name] is False and "None" in str(f.type)
                out[f.name] = None if none else body[f.name]
        return out

    def imported(self, path: KeyPath, ref: Any, kinds: str = "'package.module:name'") -> Any:
        if not isinstance(ref, str) or ":" not in ref:
            self.fail(path, f"must be {kinds}, got {show(ref)}")
            return None
        try:
            return import_object(ref)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None

    def call(self, path: KeyPath, fn: Callable[..., T], kwargs: dict[str, Any],
             what: str) -> T | None:  # fmt: skip
        """``fn(**kwargs)``: an argument it does not take, or a ValueError naming one, is put
        on that argument's key under ``path``."""
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            params = signature.parameters.values()
            if all(p.kind is not p.VAR_KEYWORD for p in params):
                keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                named = [p.name for p in params if p.kind in keyword]
                unknown = [key for key in kwargs if key not in named]
                for key in unknown:
                    self.fail((*path, key), f"not an argument of {what}; expected one of "
                              f"{', '.join(named)}")  # fmt: skip
                if unknown:
                    return None
            try:
                signature.bind(**kwargs)
            except TypeError as exc:
                self.fail(path, f"{what}: {exc}")
                return None
        try:
            return self.attempt(path, lambda: fn(**kwargs), set(kwargs), what=what)
        except Exception as exc:
            self.fail(path, f"{what} raised {type(exc).__name__}: {exc}")
            return None

    def spec(self, path: KeyPath, cls: Callable[..., T], body: Any, base: Any = None) -> T | None:
        """``cls(**body)`` for a dataclass whose every field is a key of its own (with
        ``base``: ``base`` with the fields ``body`` gives replaced)."""
        body = self.table(path, body, fields_of(cls))
        if body is None:
            return None
        kwargs = self.kwargs(cls, body)
        make = cls if base is None else functools.partial(dataclasses.replace, base)
        return self.attempt(path, lambda: make(**kwargs), fields_of(cls))

    def adapter(self, path: KeyPath, module: str, name: str, extra: str) -> Any:
        """A class of lessor's adapters, or None (noted) if its extra is not installed."""
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError as exc:
            self.fail(path, f"needs {exc.name or exc}: pip install 'lessor[{extra}]'")
            return None

    def environ(self, path: KeyPath, name: Any) -> str | None:
        if not isinstance(name, str) or not name:
            self.fail(path, f"must name an environment variable, got {show(name)}")
            return None
        value = os.environ.get(name)
        if value is None:
            self.fail(path, f"the environment variable {name} is not set")
        return value

    def size(self, path: KeyPath, text: str) -> int | None:
        match = SIZE.fullmatch(text)
        if match is None:
            self.fail(path, f"must be bytes (an int) or a size such as '2GiB' or '500MB', got "
                      f"{text!r}")  # fmt: skip
            return None
        return round(float(match.group(1)) * UNITS[(match.group(2) or "b").lower()])


def show(value: Any) -> str:
    """A TOML value as an error shows it: its type and a short repr."""
    kinds = {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a float"}  # fmt: skip
    text = repr(value)
    return f"{kinds.get(type(value), type(value).__name__)} {text[:60]}{'...' * (len(text) > 60)}"


class _Scanner:
    """One pass over a TOML document; ``lines`` maps key paths to lines."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1
        self.lines: dict[tuple[str, ...], int] = {}
        self._defined: set[tuple[str, ...]] = set()

    def document(self) -> None:
        table: tuple[str, ...] = ()
        while True:
            self._blank(newlines=True)
            if self.i >= len(self.text):
                return
            start = self.i
            if self._peek() == "[":
                line = self.line
                brackets = 2 if self.text.startswith("[[", self.i) else 1
                self.i += brackets
                table = self._key()
                self.i += brackets  # past "]" or "]]" (_key stopped before it)
                self._mark(table, line)
            else:
                line = self.line
                path = table + self._key()
                self.i += 1  # past "="
                self._mark(path, line)
                self._value(path)
            self._to_line_end()
            if self.i == start:  # never stall on text the scanner does not follow
                self.i += 1

    def _mark(self, path: tuple[str, ...], line: int) -> None:
        for end in range(1, len(path)):
            self.lines.setdefault(path[:end], line)
        if path and path not in self._defined:  # defined here: not just implied earlier
            self._defined.add(path)
            self.lines[path] = line

    def _peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def _advance(self, n: int) -> None:
        self.line += self.text.count("\n", self.i, self.i + n)
        self.i += n

    def _blank(self, *, newlines: bool) -> None:
        """Skip spaces, and comments and line breaks when ``newlines``."""
        while self.i < len(self.text):
            char = self.text[self.i]
            if char in " \t\r":
                self.i += 1
            elif char == "\n" and newlines:
                self._advance(1)
            elif char == "#" and newlines:
                self._to_line_end()
            else:
                return

    def _to_line_end(self) -> None:
        end = self.text.find("\n", self.i)
        self.i = len(self.text) if end < 0 else end

    def _key(self) -> tuple[str, ...]:
        """A dotted key; stops before ``=`` or ``]``."""
        parts: list[str] = []
        while True:
            self._blank(newlines=False)
            char = self._peek()
            if char in "\"'":
                start = self.i
                self._string()
                parts.append(tomllib.loads(f"k = {self.text[start : self.i]}")["k"])
            else:
                match = _BARE.match(self.text, self.i)
                if match is None:
                    raise ValueError("not a key")
                parts.append(match.group())
                self.i = match.end()
            self._blank(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self.i += 1

    def _string(self) -> None:
        quote = self.text[self.i]
        if self.text.startswith(quote * 3, self.i):
            self.i += 3
            while not self.text.startswith(quote * 3, self.i):
                self._advance(2 if quote == '"' and self._peek() == "\\" else 1)
                if self.i >= len(self.text):
                    return
            self.i += 3
            for _ in range(2):  # up to two quotes may close the content: '''a''''
                if self._peek() == quote:
                    self.i += 1
            return
        self.i += 1
        while self.i < len(self.text) and self.text[self.i] not in (quote, "\n"):
            self.i += 2 if quote == '"' and self.text[self.i] == "\\" else 1
        self.i += 1

    def _value(self, path: tuple[str, ...] | None) -> None:
        """Skip one value; an inline table's keys are marked (not those inside arrays)."""
        self._blank(newlines=False)
        char = self._peek()
        if char in "\"'":
            self._string()
        elif char in "[{":
            self._items("]" if char == "[" else "}", path)
        else:
            self._scalar()

    def _items(self, close: str, path: tuple[str, ...] | None) -> None:
        """An array's items (their keys unmarked) or an inline table's, up to ``close``."""
        self.i += 1
        while self.i < len(self.text):
            self._blank(newlines=True)
            start = self.i
            if self._peek() in (close, ""):
                break
            if close == "}":
                line, key = self.line, self._key()
                self.i += 1  # past "="
                inner = None if path is None else path + key
                if inner is not None:
                    self._mark(inner, line)
                self._value(inner)
            else:
                self._value(None)
            self._blank(newlines=True)
            if self._peek() == ",":
                self.i += 1
            if self.i == start:  # text the scanner does not follow: give up, keep what it has
                raise ValueError("stalled")
        self.i += 1

    def _scalar(self) -> None:
        start = self.i
        while self.i < len(self.text) and self.text[self.i] not in _SCALAR_END:
            self.i += 1
        # a date and a time may be apart by a space: 1979-05-27 07:32:00
        if _DATE.match(self.text, start, self.i) and _TIME.match(self.text, self.i):
            self.i += 1
            self._scalar()
