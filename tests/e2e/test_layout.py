"""Rules of the code's shape that a review would otherwise have to remember.

- pykka's private names are used in one module only, actors/_pykka_compat.py, which
  checks the pykka version it was written against;
- no module is longer than 400 lines (a longer one has more than one job).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = ("lessor", "actors", "supervisor", "adapters")
COMPAT = ROOT / "actors" / "_pykka_compat.py"
MAX_LINES = 400

#: A private pykka name: pykka._x, a `from pykka... import _x`, or one of the private
#: hooks lessor once overrode.
PRIVATE_PYKKA = re.compile(
    r"pykka(\.\w+)*\._\w|from pykka[\w.]* import .*\b_\w|"
    r"\b_(actor_loop\w*|handle_failure|handle_receive|create_actor_inbox|ActorStop)\b"
)


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def private_pykka_uses(paths: list[Path]) -> list[str]:
    """``file:line: text`` of every line that names a private pykka name."""
    return [
        f"{path.name}:{number}: {line.strip()}"
        for path in paths
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_PYKKA.search(line)
    ]


def test_the_rules_read_this_repositorys_sources() -> None:
    """A rule over no files passes: ROOT must be the repository, with every package."""
    assert (ROOT / "pyproject.toml").is_file(), ROOT
    assert {p.relative_to(ROOT).parts[0] for p in sources()} == set(PACKAGES)


def test_pykka_internals_are_touched_only_in_the_compat_module() -> None:
    assert private_pykka_uses([p for p in sources() if p != COMPAT]) == []
    assert private_pykka_uses([COMPAT]), "the compat module is where they live"


def test_the_private_name_check_catches_what_it_is_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from pykka.messages import _ActorStop\n"
        "class A:\n    def _actor_loop(self): ...\n"
        "x = pykka._envelope.Envelope\n"
        "fine = pykka.ActorRef\n"
    )
    hits = [found.split(": ", 1)[1] for found in private_pykka_uses([bad])]
    assert hits == [
        "from pykka.messages import _ActorStop",
        "def _actor_loop(self): ...",
        "x = pykka._envelope.Envelope",
    ]


def test_no_module_is_longer_than_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_package_is_installed() -> None:
    """A package missing from pyproject's list installs without its modules: the
    editable install used by the tests still finds them, ``pip install .`` does not."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {name: ROOT / path for name, path in config["package-dir"].items()}
    found = set()
    for name, path in dirs.items():
        for init in path.rglob("__init__.py"):
            parts = init.parent.relative_to(path).parts
            found.add(".".join((name, *parts)))
    assert found - listed == set()


#: A private Ray name: ray._private, ray._raylet, or `from ray... import _x`.
PRIVATE_RAY = re.compile(r"\bray(\.\w+)*\._\w|from ray[\w.]* import .*\b_\w")


def test_lessor_on_ray_uses_ray_s_public_api_only() -> None:
    """Node deaths come from ``ray.nodes()``, agent deaths from a pending call's
    ActorDiedError: no GCS subscriber, so nothing breaks when Ray's internals move."""
    hits = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_RAY.search(line)
    ]
    assert hits == []
    assert PRIVATE_RAY.search("from ray._private.gcs_pubsub import GcsAioNodeInfoSubscriber")
    assert PRIVATE_RAY.search("ray._raylet.CoreWorker")
    assert not PRIVATE_RAY.search("from ray.exceptions import ActorDiedError")
