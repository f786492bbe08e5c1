"""A pool's factory calls, run off its turn: on the shared factory threads, or on the
releasing thread for a reset (see ``PoolActor._release``). Each reports its outcome to the pool
as an internal message; a closed pool destroys what comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lessor.actors.pool_messages import Checked, Created, CreateFailed, ResetDone
from lessor.factory import Factory

__all__ = ["FactoryWork"]

log = logging.getLogger("lessor.pool")


class FactoryWork:
    """Calls ``factory`` and hands each outcome to ``report`` (the pool's mailbox)."""

    def __init__(self, factory: Factory[Any], pool: str, report: Callable[[Any], None]) -> None:
        self._factory = factory
        self._pool = pool
        self._report = report

    def create(self) -> None:
        try:
            resource = self._factory.create()
        except Exception as exc:
            self._report(CreateFailed(exc))
            return
        self._report(Created(resource))

    def destroy(self, resource: Any, reason: str) -> None:
        try:
            self._factory.destroy(resource)
        except Exception:
            log.exception("pool %r: destroying a resource (%s) failed", self._pool, reason)

    def check(self, slot: int, resource: Any) -> None:
        try:
            ok = bool(self._factory.check(resource))
        except Exception:
            log.warning("pool %r: check raised", self._pool, exc_info=True)
            ok = False
        self._report(Checked(slot, ok))

    def reset(self, slot: int, resource: Any) -> None:
        ok = False
        try:
            self._factory.reset(resource)
            ok = True
        except Exception as exc:  # the designed way to say "do not reuse this one"
            log.info("pool %r: reset refused a resource: %r", self._pool, exc)
        finally:  # (an interrupt in reset destroys the resource rather than lose its slot)
            self._report(ResetDone(slot, ok))
