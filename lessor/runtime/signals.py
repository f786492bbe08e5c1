"""How a Runtime hears of SIGTERM, SIGINT and interpreter exit, and what a signal does after.

A signal shuts the runtime down gracefully; one that lands during a shutdown hurries
it instead of waiting on it. Once the shutdown is done, :func:`deliver` gives the
signal the effect it would have had without the runtime: the previous handler's,
KeyboardInterrupt, or an exit. Python lets only the main thread install handlers, so
a Runtime built elsewhere (or with ``handle_signals=False``) installs none.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from lessor.actors.base import after_turns, holding_a_turn

__all__ = ["SignalHooks", "deliver"]

log = logging.getLogger("lessor.runtime")


class SignalHooks:
    """SIGTERM and SIGINT handlers and an atexit hook for one runtime, and their undoing.

    ``shutdown()`` is the runtime's; ``closing()`` is the id of the thread running its
    shutdown while one is under way (else None); ``hurry`` is set to cut that shutdown
    short. Nothing is installed unless ``install`` and this is the main thread.
    """

    def __init__(
        self,
        shutdown: Callable[[], object],
        closing: Callable[[], int | None],
        hurry: threading.Event,
        install: bool,
    ) -> None:
        self._shutdown = shutdown
        self._closing = closing
        self._hurry = hurry
        self._pending: tuple[int, Any] | None = None  # a signal that hurried a shutdown
        self._by_signal = False  # the shutdown was a handler's own
        self._previous: dict[int, Any] = {}
        if install and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
            atexit.register(self._exit)

    def restore(self) -> None:
        """Put back the handlers ours replaced (unless someone replaced ours) and drop the
        atexit hook. Only the main thread may; elsewhere this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                if signal.getsignal(signum) == self._handle:
                    signal.signal(signum, previous)
        self._previous.clear()
        atexit.unregister(self._exit)

    def deliver_pending(self) -> None:
        """Called once the shutdown is done: a signal that hurried it takes effect now
        (unless the shutdown was a handler's, which delivers its own signal)."""
        pending, self._pending = self._pending, None
        if pending is not None and not self._by_signal:
            deliver(*pending)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if holding_a_turn():  # it landed inside an actor's turn on this thread: after it
            after_turns(lambda: self._handle(signum, frame))
            return
        previous = self._previous.get(signum)
        closer = self._closing()
        if closer is not None:  # a shutdown is under way
            self._hurry.set()
            log.warning("%s during shutdown: stopping at once", signal.Signals(signum).name)
            if closer == threading.get_ident():
                # It is the shutdown this handler interrupted: it goes on, hurried, and
                # the signal takes effect once it is done.
                self._pending = self._pending or (signum, previous)
                return
        self._by_signal = True
        self._shutdown()
        deliver(signum, previous)

    def _exit(self) -> None:
        self._shutdown()


def deliver(signum: int, previous: Any) -> None:
    """What a signal would have done without the runtime's handler: ``previous``'s effect.

    SIGINT raises KeyboardInterrupt, which, if nothing catches it, is printed as one
    line rather than a traceback through the runtime's waits (the process still exits
    as Ctrl-C'd programs do); another signal whose previous handler was the default
    exits with status 128 + signum.
    """
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, None)
    elif signum == signal.SIGINT:
        interrupt = KeyboardInterrupt("the lessor runtime was shut down")
        interrupt.lessor_quiet = True  # type: ignore[attr-defined]
        if not getattr(sys.excepthook, "lessor_quiet", False):
            sys.excepthook = _quiet_hook(sys.excepthook)
        raise interrupt from None
    else:
        raise SystemExit(128 + signum)


def _quiet_hook(previous: Callable[..., Any]) -> Callable[..., Any]:
    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if getattr(value, "lessor_quiet", False):
            print(f"{kind.__name__}: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    hook.lessor_quiet = True  # type: ignore[attr-defined]
    return hook
