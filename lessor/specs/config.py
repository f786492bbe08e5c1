"""A runtime's tree from a TOML file: its pools, breakers, batchers, memory and workers.

``load("tree.toml")`` checks the whole file and gives a :class:`TreeConfig` of specs for
``lessor.runtime.from_config.build``. Every mistake is reported at once (a ConfigError
line ``file:line: dotted.key: why`` each), so a file is fixed in one round. The specs
check their own fields; this adds unknown keys, names resolved to objects, and lines.
The format is in docs/config.md.
"""

from __future__ import annotations

import builtins
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lessor.errors import LessorError
from lessor.factory import Factory, TokenFactory
from lessor.specs.batch import BatchSpec
from lessor.specs.breaker import BreakerSpec
from lessor.specs.checks import count, number, require
from lessor.specs.config_lines import (
    KeyPath,
    Reporter,
    dotted,
    fields_of,
    key_lines,
    show,
    syntax_error,
    tomllib,
)
from lessor.specs.memory import MACHINE, MemorySpec, Thresholds
from lessor.specs.tree import Backoff, PoolSpec, Restart, SupervisorSpec

__all__ = ["ConfigError", "TreeConfig", "WorkersConfig", "load", "loads"]

T = TypeVar("T")


class ConfigError(LessorError, ValueError):
    """A config that cannot be used. ``str()``: ``tree.toml:12: pools.pg.max_size: why``.

    ``path`` (the file), ``line`` (1-based; 0 when the file could not be read), ``key``
    (dotted; "" when no key is to blame) and ``why`` say where the first mistake is;
    ``errors`` holds every mistake found, in line order, and ``str()`` has a line each.
    """

    def __init__(self, path: str, line: int, key: str, why: str) -> None:
        why = " ".join(why.splitlines())  # one line per mistake, whatever a message holds
        self.path, self.line, self.key, self.why = path, line, key, why
        self.errors: tuple[ConfigError, ...] = (self,)
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {why}" if key else f"{where}: {why}")

    @classmethod
    def of(cls, errors: list[ConfigError]) -> ConfigError:
        """One error standing for several: the first's fields, every one's line."""
        first = errors[0]
        combined = cls(first.path, first.line, first.key, first.why)
        combined.errors = tuple(errors)
        combined.args = ("\n".join(str(error) for error in errors),)
        return combined

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigError, (self.path, self.line, self.key, self.why))


@dataclass(frozen=True)
class WorkersConfig:
    """``[workers]``: the worker processes ``lessor run`` starts (``spawn_workers``'s options)."""

    #: Worker processes to start; None: ``os.cpu_count()`` (processes).
    count: int | None = None
    #: "transient" (one that returns is done), "permanent" or "temporary".
    restart: Restart = "transient"
    #: Restarts allowed within ``max_seconds``; one more and the group gives up (restarts).
    max_restarts: int = 10
    #: The window ``max_restarts`` is counted in (seconds).
    max_seconds: float = 10.0
    #: A delay before each restart; None: restart at once.
    backoff: Backoff | None = None
    #: Arguments of the job's function: ``function(*args)`` (values that pickle).
    args: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.count is not None:
            count("count", self.count)
        require(self.restart in ("permanent", "transient", "temporary"), "restart",
                "must be permanent, transient or temporary", self.restart)  # fmt: skip
        require(isinstance(self.max_restarts, int) and not isinstance(self.max_restarts, bool)
                and self.max_restarts >= 0, "max_restarts", "must be an int >= 0",
                self.max_restarts)  # fmt: skip
        require(number(self.max_seconds) and 0 < self.max_seconds < math.inf, "max_seconds",
                "must be > 0 and finite", self.max_seconds)  # fmt: skip
        require(self.backoff is None or isinstance(self.backoff, Backoff), "backoff",
                "must be a Backoff or None", self.backoff)  # fmt: skip
        require(isinstance(self.args, tuple), "args", "must be a tuple", self.args)


@dataclass(frozen=True)
class TreeConfig:
    """A checked config: ``runtime`` holds ``Runtime(...)``'s keyword arguments (only those
    the file gives), the specs are in file order, ``source`` is the file's name."""

    runtime: dict[str, Any] = field(default_factory=dict)
    pools: tuple[PoolSpec, ...] = ()
    breakers: tuple[BreakerSpec, ...] = ()
    batchers: tuple[BatchSpec, ...] = ()
    memory: MemorySpec | None = None
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    source: str = "<string>"


def load(path: str | os.PathLike[str]) -> TreeConfig:
    """Read and check a TOML file (ConfigError, with every mistake, if it is not usable)."""
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(source, 0, "", f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(source, line, "", "invalid TOML: not UTF-8") from None
    return loads(text, source)


def loads(text: str, source: str = "<string>") -> TreeConfig:
    """Check a TOML text; ``source`` names it in errors (default "<string>")."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, *syntax_error(exc, text)) from None
    loader = _Loader(key_lines(text))
    config = loader.tree(data, source)
    if loader.errors:
        raise ConfigError.of([ConfigError(source, *error) for error in sorted(loader.errors)])
    return config


SECTIONS = ("runtime", "pools", "breakers", "batchers", "memory", "workers")
ROOT_KEYS = frozenset({"strategy", "max_restarts", "max_seconds", "backoff"})
RUNTIME_KEYS = ROOT_KEYS | {"shutdown_timeout", "control", "metrics_port"}
FACTORIES = "'tokens', 'postgres', 'http' or 'package.module:callable'"
#: Keys of a pool that only one kind of factory takes.
FACTORY_KEYS = {"tokens": frozenset({"tokens", "count"}), "postgres": frozenset({"conninfo_env"})}
POOL_KEYS = fields_of(PoolSpec) - {"name"} | {"factory_args"} | set().union(*FACTORY_KEYS.values())
BREAKER_KEYS = fields_of(BreakerSpec) - {"name"}
HOOKS = frozenset({"on_batch_start", "on_batch_complete", "on_item_error"})
#: factory = "<kind>": the adapter's module, class and extra.
ADAPTERS = {"postgres": ("lessor.adapters.postgres", "PostgresFactory", "postgres"),
            "http": ("lessor.adapters.http", "HttpSessionFactory", "http")}  # fmt: skip
SINKS = {"postgres_insert": "InsertSink", "postgres_copy": "CopySink"}
SINK_KEYS = frozenset({"conninfo", "conninfo_env", "table", "columns", "key", "connect_timeout",
                       "application_name"})  # fmt: skip
BATCH_KEYS = fields_of(BatchSpec) - {"name"} | {"processor_args", "sink"}


class _Loader(Reporter):
    """Turns parsed TOML into specs, noting each mistake (see Reporter)."""

    breaker_names: frozenset[str] = frozenset()

    def tree(self, data: dict[str, Any], source: str) -> TreeConfig:
        self.table((), data, SECTIONS)
        runtime = self.runtime(("runtime",), data.get("runtime", {}))
        breakers = self.named("breakers", data, self.breaker)
        pools = self.named("pools", data, self.pool)
        batchers = self.named("batchers", data, self.batcher)
        memory = self.memory(("memory",), data["memory"]) if "memory" in data else None
        workers = self.workers(("workers",), data.get("workers", {})) or WorkersConfig()
        return TreeConfig(runtime, pools, breakers, batchers, memory, workers, source)

    def named(self, section: str, data: dict[str, Any],
              make: Callable[[KeyPath, str, Any], T | None]) -> tuple[T, ...]:  # fmt: skip
        tables = data.get(section, {})
        if not isinstance(tables, dict):
            self.fail((section,), f"must be a table of [{section}.<name>] tables, got "
                      f"{show(tables)}")  # fmt: skip
            return ()
        if section == "breakers":  # pools check their breaker names against these
            self.breaker_names = frozenset(tables)
        made = (make((section, name), name, body) for name, body in tables.items())
        return tuple(spec for spec in made if spec is not None)

    def runtime(self, path: KeyPath, body: Any) -> dict[str, Any]:
        body = self.table(path, body, RUNTIME_KEYS)
        if body is None:
            return {}
        out = dict(body)
        if "backoff" in body:
            out["backoff"] = self.backoff((*path, "backoff"), body["backoff"])
        root = {key: out[key] for key in ROOT_KEYS & out.keys()}
        self.attempt(path, lambda: SupervisorSpec("root", (), **root), ROOT_KEYS)
        for key in sorted((RUNTIME_KEYS - ROOT_KEYS) & out.keys()):
            self.attempt(path, functools.partial(_check_runtime, key, out[key]), [key])
        return out

    def backoff(self, path: KeyPath, body: Any) -> Backoff | None:
        return None if body is False else self.spec(path, Backoff, body)

    def pool(self, path: KeyPath, name: str, body: Any) -> PoolSpec | None:
        body = self.table(path, body, POOL_KEYS, required=("factory",))
        if body is None:
            return None
        kind = body["factory"]
        for other, keys in FACTORY_KEYS.items():
            for key in sorted(keys & body.keys() if other != kind else ()):
                self.fail((*path, key), f"only for factory = {other!r}")
                del body[key]
        breaker = body.get("breaker")
        if isinstance(breaker, str) and breaker and breaker not in self.breaker_names:
            self.fail((*path, "breaker"), f"no breaker {breaker!r}: add a "
                      f"[breakers.{dotted((breaker,))}] table")  # fmt: skip
        before = len(self.errors)
        factory = self.factory(path, kind, body)
        kwargs = self.kwargs(PoolSpec, body, skip=("factory",))
        if kind == "tokens" and "max_size" not in body and factory and factory.capacity:
            kwargs["max_size"] = factory.capacity  # by default, every token
        if factory is None or len(self.errors) > before:
            return None
        return self.attempt(path, lambda: PoolSpec(name, factory, **kwargs), fields_of(PoolSpec),
                            {"name": ()})  # fmt: skip

    def factory(self, path: KeyPath, kind: Any, body: dict[str, Any]) -> Factory[Any] | None:
        where = (*path, "factory_args")
        args = body.get("factory_args", {})
        if not isinstance(args, dict):
            self.fail(where, f"must be a table, got {show(args)}")
            return None
        if kind == "tokens":
            return self.tokens(path, body)
        if isinstance(kind, str) and kind in ADAPTERS:
            make = self.adapter((*path, "factory"), *ADAPTERS[kind])
            if "conninfo_env" in body:
                if "conninfo" in args:
                    self.fail((*path, "conninfo_env"), "give conninfo_env or "
                              "factory_args.conninfo, not both")  # fmt: skip
                env = self.environ((*path, "conninfo_env"), body["conninfo_env"])
                args = {**args, "conninfo": env}
            args = {key: tuple(v) if isinstance(v, list) else v for key, v in args.items()}
        else:
            make = self.imported((*path, "factory"), kind, FACTORIES)
        if make is None or None in args.values():
            return None
        made: Factory[Any] | None = self.call(where, make, args, getattr(make, "__name__", kind))
        return made

    def tokens(self, path: KeyPath, body: dict[str, Any]) -> Factory[Any] | None:
        tokens, n = body.get("tokens"), body.get("count", 0)
        if "factory_args" in body:
            self.fail((*path, "factory_args"), "factory 'tokens' takes none: give tokens or count")
        elif "tokens" in body and "count" in body:
            self.fail((*path, "count"), "give tokens or count, not both")
        elif "tokens" in body and not isinstance(tokens, list):
            self.fail((*path, "tokens"), f"must be a list of tokens, got {show(tokens)}")
        elif "count" in body:
            before = len(self.errors)
            self.attempt(path, functools.partial(count, "count", n), ["count"])
            return TokenFactory(range(n)) if len(self.errors) == before else None
        else:
            return TokenFactory(tokens)
        return None

    def breaker(self, path: KeyPath, name: str, body: Any) -> BreakerSpec | None:
        body = self.table(path, body, BREAKER_KEYS)
        if body is None:
            return None
        before = len(self.errors)
        kwargs = self.kwargs(BreakerSpec, body)
        for key in ("record_errors", "ignore_errors"):
            if key in body:
                kwargs[key] = self.error_filter((*path, key), body[key])
        if len(self.errors) > before:
            return None
        return self.attempt(path, lambda: BreakerSpec(name, **kwargs), fields_of(BreakerSpec),
                            {"name": ()})  # fmt: skip

    def error_filter(self, path: KeyPath, value: Any) -> Any:
        """A list of exception classes (``"module:Class"``, or a builtin's bare name), or
        one ``"module:predicate"``."""
        if isinstance(value, str):
            return self.imported(path, value, "a list of 'module:ExceptionClass' or "
                                 "'module:predicate'")  # fmt: skip
        if not isinstance(value, list):
            self.fail(path, f"must be a list of 'module:ExceptionClass', got {show(value)}")
            return None
        types = []
        for index, ref in enumerate(value):
            bare = isinstance(ref, str) and ":" not in ref
            kind = getattr(builtins, ref, None) if bare else self.imported((*path, index), ref)
            if isinstance(kind, type) and issubclass(kind, BaseException):
                types.append(kind)
            elif kind is not None or bare:
                self.fail((*path, index), f"{ref!r} is not an exception class")
        return tuple(types)

    def batcher(self, path: KeyPath, name: str, body: Any) -> BatchSpec | None:
        body = self.table(path, body, BATCH_KEYS | SINK_KEYS)
        if body is None:
            return None
        for key in sorted(SINK_KEYS & body.keys() if "sink" not in body else ()):
            self.fail((*path, key), "only with a sink")
        before = len(self.errors)
        kwargs = self.kwargs(BatchSpec, body, skip=HOOKS | {"processor"})
        for hook in sorted(HOOKS & body.keys()):
            kwargs[hook] = self.imported((*path, hook), body[hook])
        processor = self.processor(path, body)
        if processor is None or len(self.errors) > before:
            return None
        key = "sink" if "sink" in body else "processor"
        return self.attempt(path, lambda: BatchSpec(name, processor, **kwargs),
                            fields_of(BatchSpec), {"name": (), "processor": (key,)})  # fmt: skip

    def processor(self, path: KeyPath, body: dict[str, Any]) -> Any:
        if "processor" in body and "sink" in body:
            self.fail((*path, "sink"), "give processor or sink, not both")
        elif "processor" in body:
            fn = self.imported((*path, "processor"), body["processor"])
            if "processor_args" not in body or fn is None:
                return fn
            args = body["processor_args"]
            if isinstance(args, dict):
                return self.call((*path, "processor_args"), fn, args, body["processor"])
            self.fail((*path, "processor_args"), f"must be a table, got {show(args)}")
        elif "sink" in body:
            return self.sink(path, body)
        else:
            self.fail(path, "needs processor = 'package.module:callable' or sink = "
                      "'postgres_insert' | 'postgres_copy'")  # fmt: skip
        return None

    def sink(self, path: KeyPath, body: dict[str, Any]) -> Any:
        kind = body["sink"]
        if not isinstance(kind, str) or kind not in SINKS:
            self.fail((*path, "sink"), f"must be 'postgres_insert' or 'postgres_copy', got "
                      f"{show(kind)}")  # fmt: skip
            return None
        if "processor_args" in body:
            self.fail((*path, "processor_args"), "only with a processor")
        make = self.adapter(
            (*path, "sink"), "lessor.adapters.postgres_sink", SINKS[kind], "postgres"
        )
        if make is None:
            return None
        args = {key: body[key] for key in sorted(SINK_KEYS & body.keys()) if key != "conninfo_env"}
        if "conninfo_env" in body:
            if "conninfo" in body:
                self.fail((*path, "conninfo_env"), "give conninfo_env or conninfo, not both")
            args["conninfo"] = self.environ((*path, "conninfo_env"), body["conninfo_env"])
            if args["conninfo"] is None:
                return None
        return self.call(path, make, args, make.__name__)

    def memory(self, path: KeyPath, body: Any) -> MemorySpec | None:
        body = self.table(path, body, fields_of(MemorySpec))
        if body is None:
            return None
        before = len(self.errors)
        kwargs = self.kwargs(MemorySpec, body)
        if isinstance(body.get("max_memory"), str):
            kwargs["max_memory"] = self.size((*path, "max_memory"), body["max_memory"])
        for key, base in (("thresholds", Thresholds()), ("machine", MACHINE)):
            if isinstance(body.get(key), dict):  # what it leaves out keeps base's value
                kwargs[key] = self.spec((*path, key), Thresholds, body[key], base)
        if len(self.errors) > before:
            return None
        return self.attempt(path, lambda: MemorySpec(**kwargs), fields_of(MemorySpec))

    def workers(self, path: KeyPath, body: Any) -> WorkersConfig | None:
        body = self.table(path, body, fields_of(WorkersConfig))
        if body is None:
            return None
        before = len(self.errors)
        kwargs = self.kwargs(WorkersConfig, body)
        if "backoff" in body:
            kwargs["backoff"] = self.backoff((*path, "backoff"), body["backoff"])
        if "args" in body:
            if isinstance(body["args"], list):
                kwargs["args"] = tuple(body["args"])
            else:
                self.fail((*path, "args"), f"must be a list, got {show(body['args'])}")
        if len(self.errors) > before:
            return None
        return self.attempt(path, lambda: WorkersConfig(**kwargs), fields_of(WorkersConfig))


def _check_runtime(key: str, value: Any) -> None:
    """The ``[runtime]`` keys no spec checks (ValueError naming the key)."""
    if key == "shutdown_timeout":
        require(number(value) and 0 < value < math.inf, key, "must be > 0 and finite", value)
    elif key == "control":
        require(isinstance(value, bool), key, "must be true or false", value)
    elif key == "metrics_port":
        require(number(value) and isinstance(value, int) and 0 < value < 65536, key,
                "must be a TCP port, 1 to 65535", value)  # fmt: skip
