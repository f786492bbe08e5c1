"""How lessor's actors learn that a node agent's process is gone: a pending call.

Ray has no "tell me when this actor dies" in its public API, but a call pending on
an actor fails when its process does: with ``ActorDiedError`` if Ray will not
restart it (killed for good, or its node is dead), or ``ActorUnavailableError`` if it
is restarting *or* merely unreachable. The second needs one more look: the agent is
asked its pid, and a new pid means the old process is dead; no answer means
*suspect*, which is not death (a partitioned node may still run).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayError

__all__ = ["SUSPECT_ASK", "SUSPECT_RETRY", "until_gone"]

#: Seconds between pid checks of a suspect agent: a restarted agent's tokens come back
#: this long at most after Ray has restarted it (the check is one cheap call).
SUSPECT_RETRY = 0.05
#: Seconds one pid check may wait for its answer.
SUSPECT_ASK = 1.0


def _nothing(_suspect: bool) -> None:
    pass


async def until_gone(
    handle: Any,
    pid: int,
    suspect_timeout: float | None = None,
    on_suspect: Callable[[bool], None] = _nothing,
) -> str:
    """Wait until agent process ``pid`` (behind ``handle``) is gone; why:
    "agent died" (for good), "agent restarted", "agent replaced" (a new process
    answered), or "agent unreachable" (suspect for ``suspect_timeout`` s, if set).
    ``on_suspect(True/False)`` is told when it becomes and stops being suspect."""
    since: float | None = None
    while True:
        try:
            await handle.hold.remote(pid)
            return "agent replaced"  # hold() answers only when it is not that process
        except ActorDiedError:
            return "agent died"
        except (ActorUnavailableError, RayError):
            pass
        while True:  # suspect: ask its pid until it answers, dies, or times out
            now = time.monotonic()
            if since is None:
                since = now
                on_suspect(True)
            try:
                answer = await asyncio.wait_for(handle.whoami.remote(), SUSPECT_ASK)
            except ActorDiedError:
                return "agent died"
            except (ActorUnavailableError, RayError, TimeoutError):
                if suspect_timeout is not None and now - since >= suspect_timeout:
                    return "agent unreachable"
                await asyncio.sleep(SUSPECT_RETRY)
                continue
            since = None
            on_suspect(False)
            if answer != pid:
                return "agent restarted"
            break  # the same process, reachable again: wait on it again
