"""Cleanup that signals cannot cut short.

While the bench runs, SIGINT (Ctrl-C), SIGTERM and SIGHUP raise ``Interrupted`` in the main
thread, which unwinds through ``Resources`` blocks; their cleanup callbacks run with those
signals held back (a second Ctrl-C does not abandon a half-stopped daemon), and a signal that
arrived during a normal cleanup is raised right after it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any, ParamSpec

from bench.errors import Interrupted

P = ParamSpec("P")
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _State:
    shield_depth = 0
    pending: int | None = None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _State.shield_depth:
        _State.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within this block the handled signals raise ``Interrupted`` (main thread only)."""
    previous = {sig: signal.signal(sig, _on_signal) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _State.pending = None


class Resources:
    """Callbacks run last-in first-out on leaving the block, whatever ends it."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def callback(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
        self._stack.callback(fn, *args, **kwargs)

    def __enter__(self) -> Resources:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _State.shield_depth += 1
        try:
            self._stack.close()
        finally:
            _State.shield_depth -= 1
        if _State.shield_depth == 0 and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            if exc_type is None:
                raise Interrupted(signum)
