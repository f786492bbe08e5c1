"""The TOML config of a runtime's tree (lessor.specs.config): every table parsed into the
specs a hand would build, every mistake reported with its file, line and dotted key,
the line scanner behind those lines, and ``build`` starting a Runtime from a config."""

from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lessor
from lessor import NoSuchBreaker, Runtime
from lessor.adapters.http import HttpSessionFactory
from lessor.adapters.postgres import InsertSink, PostgresFactory
from lessor.factory import TokenFactory
from lessor.runtime.from_config import build
from lessor.specs import (
    Backoff,
    BatchSpec,
    BreakerSpec,
    MemorySpec,
    PoolSpec,
    SupervisorSpec,
    Thresholds,
)
from lessor.specs.config import ConfigError, TreeConfig, WorkersConfig, load, loads
from lessor.specs.config_lines import dotted, import_object, key_lines, line_of, tomllib
from lessor.specs.memory import MACHINE
from tests.workers.run_targets import Numbers, double

EXAMPLE = """\
# the tree of a small job
[runtime]
strategy = "rest_for_one"
max_restarts = 5
max_seconds = 2.5
shutdown_timeout = 3.0
backoff = { min = 0.2, max = 4.0 }

[pools.slots]
factory = "tokens"
tokens = ["a", "b"]
max_size = 2
lease_ttl = 60

[pools.numbers]
factory = "tests.workers.run_targets:Numbers"
max_size = 4
max_idle = false          # keep idle resources: None
breaker = "api"
[pools.numbers.factory_args]
start = 100

[breakers.api]
window_size = 20
minimum_calls = 10
failure_rate_threshold = 25.0
record_errors = ["ConnectionError", "tests.core.test_config:Flaky"]
ignore_errors = ["KeyError"]

[batchers.rows]
processor = "tests.workers.run_targets:double"
max_batch_size = 50
max_wait = 0.01

[memory]
max_memory = "512MiB"
leak_mb_per_min = false
machine = false
[memory.thresholds]
pause = 0.85
restart = 0.97

[workers]
count = 3
restart = "permanent"
max_restarts = 4
max_seconds = 20
args = ["slots", 50]
[workers.backoff]
min = 0.5
"""


class Flaky(Exception):
    """A module-level exception class a breaker config names."""


def error(text: str, **kw: Any) -> ConfigError:
    """The ConfigError ``loads(text)`` raises."""
    with pytest.raises(ConfigError) as caught:
        loads(text, source="tree.toml", **kw)
    return caught.value


def errors(text: str) -> list[tuple[int, str, str]]:
    """(line, key, why) of every mistake found in ``text``."""
    return [(e.line, e.key, e.why) for e in error(text).errors]


def line(text: str, needle: str) -> int:
    """The 1-based line of ``text`` holding ``needle`` (once)."""
    found = [n for n, body in enumerate(text.splitlines(), 1) if needle in body]
    assert len(found) == 1, (needle, found)
    return found[0]


# -- a valid config round-trips into the specs a hand would build ----------------------------


def test_the_example_round_trips_into_hand_built_specs() -> None:
    config = loads(EXAMPLE, source="tree.toml")
    assert config.source == "tree.toml"
    assert config.runtime == {
        "strategy": "rest_for_one", "max_restarts": 5, "max_seconds": 2.5,
        "shutdown_timeout": 3.0, "backoff": Backoff(min=0.2, max=4.0),
    }  # fmt: skip
    slots, numbers = config.pools
    tokens = TokenFactory(["a", "b"])
    assert replace(slots, factory=tokens) == PoolSpec("slots", tokens, max_size=2, lease_ttl=60)
    assert type(slots.factory) is TokenFactory and slots.factory.capacity == 2
    assert {slots.factory.create(), slots.factory.create()} == {"a", "b"}
    made = Numbers(start=100)
    assert replace(numbers, factory=made) == PoolSpec(
        "numbers", made, max_size=4, max_idle=None, breaker="api"
    )
    assert type(numbers.factory) is Numbers and numbers.factory.start == 100
    assert config.breakers == (
        BreakerSpec("api", window_size=20, minimum_calls=10, failure_rate_threshold=25.0,
                    record_errors=(ConnectionError, Flaky), ignore_errors=(KeyError,)),
    )  # fmt: skip
    assert config.batchers == (BatchSpec("rows", double, max_batch_size=50, max_wait=0.01),)
    assert config.memory == MemorySpec(
        max_memory=512 * 2**20, leak_mb_per_min=None, machine=None,
        thresholds=Thresholds(pause=0.85, restart=0.97),
    )  # fmt: skip
    assert config.workers == WorkersConfig(
        count=3, restart="permanent", max_restarts=4, max_seconds=20, args=("slots", 50),
        backoff=Backoff(min=0.5),
    )  # fmt: skip


def test_the_example_in_the_docs_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", docs, re.S)
    assert blocks, "docs/config.md has its example"
    monkeypatch.setenv("PG_DSN", "dbname=docs")
    config = loads(blocks[0], source="docs/config.md")
    assert [p.name for p in config.pools] == ["gpus", "pg", "api"]
    assert config.pools[0].max_size == 2 and config.pools[2].breaker == "api"
    assert [b.name for b in config.batchers] == ["events"] and config.workers.count == 8


def test_an_empty_file_is_an_empty_tree() -> None:
    config = loads("")
    assert config == TreeConfig(source="<string>")
    assert config.workers == WorkersConfig() and config.workers.count is None
    assert (config.pools, config.breakers, config.batchers, config.memory) == ((), (), (), None)


def test_load_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "tree.toml"
    path.write_text(EXAMPLE)
    got = load(path)
    assert got == replace(loads(EXAMPLE), source=str(path), pools=got.pools)
    path.write_text('[pools.p]\nfactory = "tokens"\nmax_size = -1\n')
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert str(caught.value) == f"{path}:3: pools.p.max_size: must be an int >= 0, got -1"


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "missing.toml")
    assert caught.value.line == 0 and "missing.toml: cannot read it" in str(caught.value)
    (tmp_path / "latin1.toml").write_bytes(b'[runtime]\n# caf\xe9\nstrategy = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "latin1.toml")
    assert (caught.value.line, caught.value.why) == (2, "invalid TOML: not UTF-8")


def test_tokens_by_count_and_unbounded() -> None:
    config = loads('[pools.a]\nfactory = "tokens"\ncount = 3\n[pools.b]\nfactory = "tokens"\n')
    counted, unbounded = config.pools
    assert counted.max_size == 3  # by default every token
    assert sorted(counted.factory.create() for _ in range(3)) == [0, 1, 2]
    assert counted.factory.capacity == 3
    assert unbounded.factory.capacity is None and unbounded.max_size == 10


def test_postgres_pool_from_factory_args_and_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_PG_DSN", "dbname=from_env")
    config = loads(
        '[pools.pg]\nfactory = "postgres"\nconninfo_env = "TEST_PG_DSN"\nscope = "process"\n'
        'max_total = 8\n[pools.pg.factory_args]\napplication_name = "job"\nconnect_timeout = 2\n'
        '[pools.pg2]\nfactory = "postgres"\nfactory_args = { conninfo = "dbname=x" }\n'
    )  # fmt: skip
    pg, pg2 = config.pools
    assert isinstance(pg.factory, PostgresFactory)
    assert (pg.factory.conninfo, pg.factory.application_name) == ("dbname=from_env", "job")
    assert pg.factory.connect_timeout == 2 and (pg.scope, pg.max_total) == ("process", 8)
    assert isinstance(pg2.factory, PostgresFactory) and pg2.factory.conninfo == "dbname=x"
    pickle.loads(pickle.dumps(pg))  # a process-scoped spec travels to workers


def test_http_pool_takes_lists_for_tuples() -> None:
    text = (
        '[pools.api]\nfactory = "http"\nfactory_args = { timeout = [1.5, 9], pool_maxsize = 4 }\n'
    )
    (api,) = loads(text).pools
    assert isinstance(api.factory, HttpSessionFactory)
    assert api.factory.timeout == (1.5, 9) and api.factory.pool_maxsize == 4


def test_postgres_sink_batcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PG_DSN", "dbname=sink")
    text = (
        '[batchers.rows]\nsink = "postgres_copy"\nconninfo_env = "TEST_PG_DSN"\n'
        'table = "app.events"\ncolumns = ["id", "kind"]\nkey = ["id"]\nmax_batch_size = 500\n'
        '[batchers.ins]\nsink = "postgres_insert"\nconninfo = "dbname=x"\ntable = "t"\n'
        'columns = ["a"]\n'
    )
    rows, ins = loads(text).batchers
    sink = rows.processor
    assert type(sink).__name__ == "CopySink" and rows.max_batch_size == 500
    assert (sink.conninfo, sink.table, sink.columns, sink.key) == (  # type: ignore[attr-defined]
        "dbname=sink", "app.events", ("id", "kind"), ("id",),
    )  # fmt: skip
    assert isinstance(ins.processor, InsertSink) and ins.processor.conninfo == "dbname=x"


def test_a_processor_made_from_processor_args_and_hooks_by_name() -> None:
    text = (
        '[batchers.b]\nprocessor = "tests.core.test_config:Scaler"\n'
        'processor_args = { factor = 3 }\non_item_error = "tests.core.test_config:on_error"\n'
    )
    (spec,) = loads(text).batchers
    assert spec.processor([1, 2]) == [3, 6] and spec.on_item_error is on_error


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, items: list[int]) -> list[int]:
        return [self.factor * item for item in items]


def on_error(item: Any, exc: BaseException) -> None:
    """A batcher hook a config names."""


def test_false_is_none_only_for_fields_that_may_be_none() -> None:
    config = loads(
        '[pools.p]\nfactory = "tokens"\nmax_idle = false\nmax_lifetime = false\n'
        '[batchers.b]\nprocessor = "tests.workers.run_targets:double"\nbisect = false\n'
        "[memory]\nuss_interval = false\nmax_pause = false\n"
        '[workers]\ncount = false\n'
    )  # fmt: skip
    (pool,), (batcher,) = config.pools, config.batchers
    assert (pool.max_idle, pool.max_lifetime) == (None, None)
    assert batcher.bisect is False
    assert config.memory is not None and config.memory.uss_interval is None
    assert config.memory.max_pause is None and config.workers.count is None


@pytest.mark.parametrize(
    ("size", "expected"),
    [("2GiB", 2 * 2**30), ("500MB", 500 * 10**6), ("1.5 kib", 1536), ("100", 100),
     ("3gb", 3 * 10**9), ("7B", 7), ("1TiB", 2**40)],
)  # fmt: skip
def test_memory_sizes_take_units(size: str, expected: int) -> None:
    config = loads(f'[memory]\nmax_memory = "{size}"\n')
    assert config.memory is not None and config.memory.max_memory == expected


def test_a_machine_table_changes_only_the_levels_it_gives() -> None:
    """The machine's own levels stay (not a worker's defaults), as does what is left out."""
    config = loads("[memory.machine]\npause = 0.93\n[memory.thresholds]\nwarn = false\n")
    assert config.memory == MemorySpec(
        machine=replace(MACHINE, pause=0.93), thresholds=Thresholds(warn=None)
    )


def test_runtime_control_and_metrics_port_are_kept_for_the_runtime() -> None:
    config = loads("[runtime]\ncontrol = true\nmetrics_port = 9464\n")
    assert config.runtime == {"control": True, "metrics_port": 9464}


# -- every mistake names its file, line and key ---------------------------------------------

#: (text, line, key, a fragment of why): one mistake each.
MISTAKES: list[tuple[str, int, str, str]] = [
    # wrong types
    ('[pools.p]\nfactory = "tokens"\nmax_size = "2"\n', 3, "pools.p.max_size", "got '2'"),
    ("[runtime]\nmax_seconds = true\n", 2, "runtime.max_seconds", "must be > 0"),
    ('pools = "x"\n', 1, "pools", "must be a table of [pools.<name>] tables"),
    ("[pools]\np = 3\n", 2, "pools.p", "must be a table, got an integer 3"),
    ('[pools.p]\nfactory = "tokens"\ntokens = "ab"\n', 3, "pools.p.tokens", "must be a list"),
    ("[pools.p]\nfactory = 7\n", 2, "pools.p.factory", "must be 'tokens', 'postgres'"),
    ('[workers]\nargs = "x"\n', 2, "workers.args", "must be a list, got a string 'x'"),
    ("[workers]\ncount = 2.5\n", 2, "workers.count", "must be an int >= 1, got 2.5"),
    ('[workers]\nrestart = "sometimes"\n', 2, "workers.restart", "permanent, transient"),
    ("[runtime]\ncontrol = 1\n", 2, "runtime.control", "must be true or false, got 1"),
    ("[runtime]\nmetrics_port = 70000\n", 2, "runtime.metrics_port", "TCP port"),
    ("[memory]\nthresholds = 3\n", 2, "memory.thresholds", "must be a Thresholds, got 3"),
    ('[memory]\nmax_memory = "lots"\n', 2, "memory.max_memory", "'2GiB'"),
    ("[breakers.b]\nrecord_errors = 5\n", 2, "breakers.b.record_errors", "must be a list"),
    # unknown keys
    (
        '[pools.p]\nfactory = "tokens"\nmax_sise = 2\n',
        3,
        "pools.p.max_sise",
        "unknown key; expected one of acquire_timeout, breaker,",
    ),
    ("[pool.p]\nmax_size = 2\n", 1, "pool", "expected one of batchers, breakers, memory"),
    ("[runtime]\nstrategy = 'one_for_one'\nretries = 3\n", 3, "runtime.retries", "unknown key"),
    ("[memory.thresholds]\npanic = 0.9\n", 2, "memory.thresholds.panic", "unknown key"),
    ("[workers.backoff]\nmin = 1\nmaximum = 2\n", 3, "workers.backoff.maximum", "unknown key"),
    (
        '[pools.p]\nfactory = "tests.workers.run_targets:Numbers"\nfactory_args = { stat = 1 }\n',
        3,
        "pools.p.factory_args.stat",
        "not an argument of Numbers; expected one of start",
    ),
    (
        '[pools.p]\nfactory = "postgres"\ntokens = [1]\n',
        3,
        "pools.p.tokens",
        "only for factory = 'tokens'",
    ),
    (
        '[batchers.b]\nprocessor = "tests.workers.run_targets:double"\ntable = "t"\n',
        3,
        "batchers.b.table",
        "only with a sink",
    ),
    # bad values the specs catch, put on their key
    (
        '[pools.p]\nfactory = "tokens"\nmax_size = -1\n',
        3,
        "pools.p.max_size",
        "must be an int >= 0, got -1",
    ),
    (
        '[pools.p]\nfactory = "tokens"\n\nmin_size = 3\nmax_size = 2\n',
        4,
        "pools.p.min_size",
        "must be <= max_size (2), got 3",
    ),
    (
        '[pools.p]\nfactory = "tokens"\ntokens = [1]\nmax_size = 3\n',
        4,
        "pools.p.max_size",
        "capacity",
    ),
    ('[pools.p]\nfactory = "tokens"\nscope = "thread"\n', 3, "pools.p.scope", "'runtime' or"),
    (
        "[breakers.b]\nfailure_rate_threshold = 150\n",
        2,
        "breakers.b.failure_rate_threshold",
        "percentage",
    ),
    (
        '[batchers.b]\nprocessor = "tests.workers.run_targets:double"\nmax_wait = 0\n',
        3,
        "batchers.b.max_wait",
        "must be > 0, got 0",
    ),
    ("[memory]\nmemory_fraction = 2\n", 2, "memory.memory_fraction", "fraction in (0, 1]"),
    ("[memory.thresholds]\npause = 0.5\n", 2, "memory.thresholds.pause", "must be above cleanup"),
    ("[runtime]\nstrategy = 'one_for_none'\n", 2, "runtime.strategy", "one_for_one, one_for_all"),
    ("[runtime]\nbackoff = { min = 2, max = 1 }\n", 2, "runtime.backoff.max", "must be >= min"),
    ("[runtime]\nshutdown_timeout = -1\n", 2, "runtime.shutdown_timeout", "must be > 0"),
    ("[workers]\nmax_seconds = inf\n", 2, "workers.max_seconds", "finite"),
    ('[pools.p]\nfactory = "tokens"\ncount = 0\n', 3, "pools.p.count", "must be an int >= 1"),
    (
        '[pools.p]\nfactory = "http"\nfactory_args = { timeout = [0, 1] }\n',
        3,
        "pools.p.factory_args.timeout",
        "must be (connect > 0, read > 0)",
    ),
    (
        '[batchers.b]\nsink = "postgres_insert"\nconninfo = ""\ntable = "t"\ncolumns = []\n',
        5,
        "batchers.b.columns",
        "must name at least one column",
    ),
    # a key given a default's neighbour to blame: the table's line
    (
        '# c\n[pools.p]\nfactory = "tokens"\ncreate_backoff = 20\n',
        2,
        "pools.p.create_backoff_max",
        "must be >= create_backoff (20)",
    ),
    # missing keys
    ("\n[pools.p]\nmax_size = 2\n", 2, "pools.p.factory", "missing: this key is required"),
    ("[batchers.b]\nmax_wait = 1\n", 1, "batchers.b", "needs processor = "),
    (
        '[batchers.b]\nsink = "postgres_insert"\ntable = "t"\ncolumns = ["a"]\n',
        1,
        "batchers.b",
        "InsertSink: missing a required argument: 'conninfo'",
    ),
    (
        '[pools.p]\nfactory = "tests.core.test_config:Scaler"\n',
        1,
        "pools.p.factory_args",
        "Scaler: missing a required argument: 'factor'",
    ),
    # names that resolve to nothing, or to the wrong thing
    ('[pools.p]\nfactory = "tokenz"\n', 2, "pools.p.factory", "got a string 'tokenz'"),
    ('[pools.p]\nfactory = "no_such_module_here:F"\n', 2, "pools.p.factory", "cannot import"),
    (
        '[pools.p]\nfactory = "tests.workers.run_targets:Nothing"\n',
        2,
        "pools.p.factory",
        "has no attribute 'Nothing'",
    ),
    ('[pools.p]\nfactory = "builtins:object"\n', 2, "pools.p.factory", "must be a lessor Factory"),
    (
        '[pools.p]\nfactory = "tests.workers.run_targets:double"\n',
        1,
        "pools.p.factory_args",
        "double: missing a required argument: 'items'",
    ),
    ('[pools.p]\nfactory = "os:getcwd()"\n', 2, "pools.p.factory", "'package.module:name'"),
    (
        '[breakers.b]\nrecord_errors = ["ValueError", "os:sep"]\n',
        2,
        "breakers.b.record_errors[1]",
        "'os:sep' is not an exception class",
    ),
    (
        '[breakers.b]\nignore_errors = ["NoSuchError"]\n',
        2,
        "breakers.b.ignore_errors[0]",
        "not an exception class",
    ),
    ('[batchers.b]\nsink = "postgres_upsert"\n', 2, "batchers.b.sink", "'postgres_insert' or"),
    (
        '[breakers.a]\n[pools.p]\nfactory = "tokens"\nbreaker = "b"\n',
        4,
        "pools.p.breaker",
        "no breaker 'b': add a [breakers.b] table",
    ),
    (
        '[pools.p]\nfactory = "postgres"\nconninfo_env = "LESSOR_TEST_UNSET_DSN"\n',
        3,
        "pools.p.conninfo_env",
        "the environment variable LESSOR_TEST_UNSET_DSN is not set",
    ),
    # syntax errors: tomllib's line and column, no key
    ("[pools.p]\nfactory = tokens\n", 2, "", "invalid TOML: Invalid value (column 11)"),
    ('[pools.p]\nfactory = "a"\nfactory = "b"\n', 3, "", "invalid TOML"),
    ("[pools.p\n", 1, "", "invalid TOML"),
    ('x = """never closed\n\n', 3, "", "invalid TOML"),
]


@pytest.mark.parametrize(("text", "at", "key", "why"), MISTAKES)
def test_each_mistake_names_its_line_and_key(text: str, at: int, key: str, why: str) -> None:
    caught = error(text)
    assert (caught.path, caught.line, caught.key) == ("tree.toml", at, key), str(caught)
    assert why in caught.why, caught.why
    assert len(caught.errors) == 1, str(caught)
    where = f"tree.toml:{at}: {key}: " if key else f"tree.toml:{at}: "
    assert str(caught) == where + caught.why


def test_every_mistake_is_reported_at_once_in_line_order() -> None:
    text = (
        "[workers]\ncount = 0\n"  # 2
        '[pools.p]\nfactory = "tokens"\nmax_size = 0\ncolour = "red"\n'  # 5, 6
        "[runtime]\nbogus = 1\nmax_seconds = -2\n"  # 8, 9
    )
    found = errors(text)
    assert [(at, key) for at, key, _ in found] == [
        (2, "workers.count"), (5, "pools.p.max_size"), (6, "pools.p.colour"),
        (8, "runtime.bogus"), (9, "runtime.max_seconds"),
    ]  # fmt: skip
    caught = error(text)
    assert str(caught).splitlines() == [str(e) for e in caught.errors]
    assert (caught.line, caught.key) == (2, "workers.count")  # the first, for a single catch


def test_config_error_is_a_lessor_error_and_a_value_error_and_pickles() -> None:
    caught = error("[pools.p]\nmax_size = 1\n")
    assert isinstance(caught, lessor.LessorError) and isinstance(caught, ValueError)
    again = pickle.loads(pickle.dumps(caught.errors[0]))
    assert (again.path, again.line, again.key, again.why) == (
        caught.path, caught.line, caught.key, caught.why,
    )  # fmt: skip


def test_quoted_and_dotted_keys_are_named_as_toml_spells_them() -> None:
    caught = error('[pools."a.b"]\nfactory = "tokens"\n"max_size" = 0\n')
    assert (caught.line, caught.key) == (3, 'pools."a.b".max_size')
    caught = error('pools.p.factory = "tokens"\npools.p.max_size = 0\n')
    assert (caught.line, caught.key) == (2, "pools.p.max_size")
    caught = error('[pools]\n\np = { factory = "tokens", max_size = 0 }\n')
    assert (caught.line, caught.key) == (3, "pools.p.max_size")


def test_an_empty_pool_name_is_refused_at_its_table() -> None:
    caught = error('[pools.""]\nfactory = "tokens"\n')
    assert (caught.line, caught.key) == (1, 'pools.""')
    assert "name must be" not in caught.why and "non-empty" in caught.why


# -- hypothesis: a spec field's value is accepted exactly when the spec accepts it --------

POOL_FIELDS = [f.name for f in fields(PoolSpec) if f.name not in ("name", "factory", "breaker")]
VALUES = st.one_of(
    st.integers(-3, 40), st.floats(-5, 50, allow_nan=False), st.just(math.inf),
    st.booleans(), st.sampled_from(["lifo", "fifo", "runtime", "process", "x"]),
)  # fmt: skip


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if value == math.inf else repr(value)
    return json.dumps(value)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(POOL_FIELDS), value=VALUES, blank=st.integers(0, 3))
def test_a_pool_field_is_checked_by_the_spec_and_blamed_on_its_line(
    name: str, value: Any, blank: int
) -> None:
    text = "#\n" * blank + f'[pools.p]\nfactory = "tokens"\n{name} = {toml_value(value)}\n'
    optional = "None" in str({f.name: f.type for f in fields(PoolSpec)}[name])
    factory = TokenFactory()
    try:
        expected = PoolSpec("p", factory, **{name: None if value is False and optional else value})
    except ValueError as exc:
        blamed = str(exc).split()[0]
        caught = error(text)
        assert caught.key == f"pools.p.{blamed}"
        assert caught.line == blank + (3 if blamed == name else 1)
        assert caught.why == str(exc).partition(" ")[2]
    else:
        (got,) = loads(text).pools
        assert replace(got, factory=factory) == expected


# -- the line scanner -------------------------------------------------------------------------

TRICKY = '''\
title = "not [a.table]"        # 1
[a]                            # 2
x = """                        # 3
[fake]
y = 1
"""
z.w = 'lit'                    # 7
"q.r" = 1                      # 8
'lit key'.s = [                # 9
  1, # comment [b]
  2,
]
t = { u = 1, v = { w = 2 } }   # 13
d = 1979-05-27 07:32:00        # 14
e = [1979-05-27 07:32:00, 1]   # 15
[[arr]]                        # 16
k = 1                          # 17
[[arr]]
k = 2
[b.c.d]                        # 20
e = \'\'\'x\'\'\'\'               # 21
[b]                            # 22
f = "\\"quoted\\" = 3"           # 23
'''


def test_the_scanner_maps_every_kind_of_key_to_its_line() -> None:
    tomllib.loads(TRICKY)  # valid TOML, or the test proves nothing
    lines = key_lines(TRICKY)
    assert lines == {
        ("title",): 1, ("a",): 2, ("a", "x"): 3, ("a", "z"): 7, ("a", "z", "w"): 7,
        ("a", "q.r"): 8, ("a", "lit key"): 9, ("a", "lit key", "s"): 9, ("a", "t"): 13,
        ("a", "t", "u"): 13, ("a", "t", "v"): 13, ("a", "t", "v", "w"): 13, ("a", "d"): 14,
        ("a", "e"): 15, ("arr",): 16, ("arr", "k"): 17, ("b", "c", "d"): 20,
        ("b", "c"): 20, ("b",): 22, ("b", "c", "d", "e"): 21, ("b", "f"): 23,
    }  # fmt: skip


def test_line_of_falls_back_to_the_nearest_table() -> None:
    lines = {("pools",): 3, ("pools", "p"): 5}
    assert line_of(lines, ("pools", "p", "max_size")) == 5
    assert line_of(lines, ("pools", "q", "factory")) == 3
    assert line_of(lines, ("breakers", "b", "record_errors", 2)) == 1
    assert line_of({("b", "r"): 7}, ("b", "r", 2)) == 7  # a list item: its list's line


def test_dotted_quotes_what_is_not_bare() -> None:
    assert dotted(("pools", "a.b", "max_size")) == 'pools."a.b".max_size'
    assert dotted(("breakers", "x", "record_errors", 1)) == "breakers.x.record_errors[1]"
    assert dotted(("pools", "")) == 'pools.""'
    assert dotted(("é",)) == '"é"'


def test_the_scanner_never_raises_on_text_it_does_not_follow() -> None:
    for text in ("= 1", "[", "a = [1, 2", 'a = {b = "', "a.b.", "a = }", "\x00"):
        assert isinstance(key_lines(text), dict)


NAMES = st.sampled_from(["a", "b", "max_size", "x-y", "k1", "a.b", "x y", "é", "", "[t]"])
SCALARS = st.one_of(
    st.integers(-10, 10), st.booleans(),
    st.text(st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from("\n\té"),
            max_size=8),
)  # fmt: skip
DECOYS = ['"""\n[decoy]\nk = 1\n"""', "'''\n# x = 2\n'''", "[\n  1, # [c]\n  2,\n]"]


def key_text(name: str, draw: Any) -> str:
    bare = re.fullmatch(r"[A-Za-z0-9_-]+", name) is not None
    style = draw(st.sampled_from(["bare", "basic", "literal"] if bare else ["basic", "literal"]))
    if style == "bare":
        return name
    if style == "literal" and "'" not in name and "\n" not in name:
        return f"'{name}'"
    return json.dumps(name)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_the_scanner_finds_every_key_of_generated_documents(data: Any) -> None:
    """Documents written in every style TOML allows; each key's line is known as it is
    written, and the scanner must find it."""
    draw = data.draw
    lines: list[str] = []
    expected: dict[tuple[str, ...], int] = {}
    tables = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    for table in tables:
        lines.extend(["", "# a comment = 1"] * draw(st.integers(0, 1)))
        expected[(table,)] = len(lines) + 1
        lines.append(f"[{key_text(table, draw)}]  # [not.this]")
        subtables = []
        for key in draw(st.lists(NAMES, max_size=4, unique=True)):
            path = (table, key)
            kind = draw(st.sampled_from(["scalar", "decoy", "dotted", "inline", "subtable"]))
            expected[path] = len(lines) + 1
            if kind == "scalar":
                lines.append(f"{key_text(key, draw)} = {toml_value(draw(SCALARS))}")
            elif kind == "decoy":
                lines.extend(f"{key_text(key, draw)} = {draw(st.sampled_from(DECOYS))}".split("\n"))
            elif kind == "dotted":
                for sub in draw(st.lists(NAMES, min_size=1, max_size=3, unique=True)):
                    expected[(*path, sub)] = len(lines) + 1
                    lines.append(f"{key_text(key, draw)} . {key_text(sub, draw)} = 1")
            elif kind == "inline":
                subs = draw(st.lists(NAMES, max_size=3, unique=True))
                for sub in subs:
                    expected[(*path, sub)] = len(lines) + 1
                items = ", ".join(f"{key_text(sub, draw)} = [1, {{z = 2}}]" for sub in subs)
                lines.append(f"{key_text(key, draw)} = {{ {items} }}")
            else:
                del expected[path]
                subtables.append(key)
        for key in subtables:
            expected[(table, key)] = len(lines) + 1
            lines.append(f"[ {key_text(table, draw)} . {key_text(key, draw)} ]")
            expected[(table, key, "v")] = len(lines) + 1
            lines.append("v = 1")
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # the generator writes valid TOML
    found = key_lines(text)
    assert {path: found.get(path) for path in expected} == expected, text


def test_import_object_only_imports_and_looks_up() -> None:
    assert import_object("tests.workers.run_targets:Numbers.create") is Numbers.create
    assert import_object("os.path:join") is __import__("os").path.join
    for bad in ("os", "os:", ":x", "os:path()", "os:__import__('x')", "os; x:y", "os:a..b"):
        with pytest.raises(ValueError, match=r"must be 'package\.module:name'"):
            import_object(bad)
    with pytest.raises(ValueError, match="cannot import 'no_such_mod'"):
        import_object("no_such_mod:x")


# -- build ----------------------------------------------------------------------------------


def test_build_starts_every_child_in_order_and_applies_overrides() -> None:
    config = loads(EXAMPLE.replace("[memory]", "[memory]\ninterval = 0.1\nleak_window = 1.0"))
    runtime = build(config, handle_signals=False, shutdown_timeout=1.0)
    try:
        assert runtime.shutdown_timeout == 1.0  # the override beats the file's 3.0
        ids = [child["id"] for child in runtime.tree()["children"]]
        assert ids.index("breaker:api") < ids.index("slots") < ids.index("numbers")
        with runtime.pool("numbers").lease(timeout=5) as number:
            assert number == 100  # Numbers(start=100), from factory_args
        assert runtime.batcher("rows").submit(21).result(timeout=5) == 42
        assert runtime.breaker("api").call(abs, -3) == 3
        assert runtime.memory().stats() is not None
    finally:
        report = runtime.shutdown(1.0)
    assert report.clean, report


def test_build_shuts_the_runtime_down_when_a_child_cannot_be_added() -> None:
    config = TreeConfig(pools=(PoolSpec("p", TokenFactory(), breaker="nope"),))
    with pytest.raises(NoSuchBreaker):
        build(config, handle_signals=False)  # the autouse fixture sees no thread left


def test_build_passes_the_runtime_table_to_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Spy(Runtime):
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr("lessor.runtime.from_config.Runtime", Spy)
    runtime = build(loads("[runtime]\nmax_restarts = 7\n"), handle_signals=False)
    runtime.shutdown(0.5)
    assert seen == {"max_restarts": 7, "handle_signals": False}


# -- what the library gets wrong ----------------------------------------------------------


def test_supervisor_spec_refuses_a_bool_max_restarts() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        SupervisorSpec("root", max_restarts=True)


def test_runtime_refuses_a_negative_shutdown_timeout() -> None:
    made: list[Runtime] = []
    try:
        with pytest.raises(ValueError, match="shutdown_timeout"):
            made.append(Runtime(shutdown_timeout=-1.0, handle_signals=False))
    finally:
        for runtime in made:
            runtime.shutdown(0.0)
