"""The one place lessor touches pykka internals, pinned to the versions it was checked on.

pykka's public API has no name for the message ``ActorRef.stop`` enqueues; an actor
that drains its own inbox after stopping must recognise it to answer it as pykka
would.
"""

from __future__ import annotations

from importlib.metadata import version

from pykka.messages import _ActorStop

__all__ = ["PYKKA_VERSION", "SUPPORTED", "is_stop"]

#: pykka major versions whose internals below were checked.
SUPPORTED = (4,)

PYKKA_VERSION = version("pykka")
if int(PYKKA_VERSION.split(".")[0]) not in SUPPORTED:  # pragma: no cover
    raise ImportError(f"lessor supports pykka {SUPPORTED}, found {PYKKA_VERSION}")


def is_stop(message: object) -> bool:
    """Whether ``message`` is the one ``ActorRef.stop`` put in an actor's inbox."""
    return isinstance(message, _ActorStop)
