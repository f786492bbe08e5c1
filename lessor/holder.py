"""Who holds a lease: a string the pool records and checks on Release.

The identity comes from where a request is sent (the envelope), never from the
message, so one thread or process cannot claim another's lease by naming it.
"""

from __future__ import annotations

import os
import threading

__all__ = ["ANONYMOUS", "current_holder"]

#: Holder of requests sent with a bare pykka ``ask``/``tell``, which carry no identity.
ANONYMOUS = "anonymous"


_local = threading.local()


def _forget() -> None:
    _local.__dict__.clear()


os.register_at_fork(after_in_child=_forget)  # a forked child is another holder


def current_holder() -> str:
    """The calling thread, as ``thread:<pid>:<ident>`` (cached: this is on every request)."""
    try:
        return _local.holder  # type: ignore[no-any-return]
    except AttributeError:
        _local.holder = f"thread:{os.getpid()}:{threading.get_ident()}"
        return _local.holder  # type: ignore[no-any-return]
