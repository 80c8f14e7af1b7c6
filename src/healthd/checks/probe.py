"""Probe: one workload's check, kept for the workload's life and started again and again.

A probe holds what can be reused between checks (the encoded request, a kept-alive
connection) and reports through a callback instead of a task per check: at thousands of checks
a second the coroutine, future and timeout objects of an ``await``-based check are most of
the cost. Every start arms one deadline timer; whichever comes first, the answer or the
deadline, produces the one result.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from healthd import durations
from healthd.model import CheckResult

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

Done = Callable[[CheckResult], None]


class Probe:
    """Base of the probes in this package: start, one result through ``done``, repeat."""

    __slots__ = (
        "_deadline",
        "_done",
        "_loop",
        "_started",
        "_timeout_text",
        "address",
        "cfg",
    )

    def __init__(self, cfg: WorkloadConfig) -> None:
        self.cfg = cfg
        self.address = ""
        self._done: Done | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None  # cached: looking it up costs a syscall
        self._timeout_text = durations.format_seconds(cfg.timeout)

    @property
    def running(self) -> bool:
        return self._done is not None

    def start(self, address: str, done: Done) -> None:
        """Begin one check. ``done`` may be called before this returns (instant failures)."""
        if self._done is not None:
            raise RuntimeError(f"{self.cfg.workload}: check already running")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self.address = address
        self._done = done
        self._started = time.monotonic()
        self._begin(loop)
        if self._done is done:  # not settled at once: arm the deadline
            self._deadline = loop.call_at(loop.time() + self.cfg.timeout, self._expire)

    def cancel(self) -> None:
        """Abandon a running check without a result (the daemon is stopping)."""
        if self._done is None:
            return
        self._done = None
        self._disarm()
        self._abort()

    def close(self) -> None:
        """Release what the probe keeps between checks."""
        self.cancel()

    def describe(self) -> str:
        raise NotImplementedError

    # -- for subclasses -------------------------------------------------------------------

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        """Stop the check in flight and free what it holds (deadline or cancel)."""
        raise NotImplementedError

    def _finish(self, ok: bool, error: str = "", note: str = "") -> None:
        done = self._done
        if done is None:
            return
        self._done = None
        self._disarm()
        done(CheckResult(ok, time.monotonic() - self._started, error, None, note))

    def _expire(self) -> None:
        self._deadline = None
        if self._done is None:
            return
        left = self.cfg.timeout - (time.monotonic() - self._started)
        if left > 0 and self._loop is not None:
            # uvloop's clock counts whole milliseconds: never report a timeout a hair early
            self._deadline = self._loop.call_later(left + 0.001, self._expire)
            return
        self._on_deadline()

    def _on_deadline(self) -> None:
        """The deadline passed before a result: a timeout, unless the kind knows better."""
        self._abort()
        self._finish(False, f"timed out after {self._timeout_text}: {self.describe()}")

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


@functools.lru_cache(maxsize=4096)
def numeric_family(host: str) -> socket.AddressFamily | None:
    """AF_INET/AF_INET6 for an IP literal, None for a name that needs resolving."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# getaddrinfo's codes, for loops that report them without their text ("unknown error -2")
_GAI_REASONS = {
    socket.EAI_NONAME: "name or service not known",
    socket.EAI_AGAIN: "temporary failure in name resolution",
    socket.EAI_FAIL: "non-recoverable failure in name resolution",
}


# What the event loops raise without an errno (asyncio's "the connection was lost" is a bare
# ConnectionResetError), in words rather than the class's name
_CLASS_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (ConnectionResetError, "connection reset"),
    (ConnectionAbortedError, "connection aborted"),
    (ConnectionRefusedError, "connection refused"),
    (BrokenPipeError, "connection closed by the peer (broken pipe)"),
    (TimeoutError, "timed out"),
)


def connect_error(exc: Exception) -> str:
    """A short reason: asyncio's own wording ("Connect call failed (...)") hides the errno."""
    if isinstance(exc, socket.gaierror):
        return _GAI_REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    if isinstance(exc, UnicodeError):  # IDNA: an empty or over-long label in the host name
        return f"invalid host name ({exc})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    for cls, words in _CLASS_REASONS:
        if isinstance(exc, cls):
            return words
    return str(exc) or f"unexpected {type(exc).__name__}"
