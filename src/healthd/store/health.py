"""Whether healthd can write its files: one ``WriteHealth`` per file it keeps.

A full or failing disk must not stop monitoring, and must not go unnoticed either: the first
failed write of an episode is logged as an error, the writes after it are only counted (a
flush every few seconds for hours would bury the log), and the first write that succeeds again
ends the episode with one line saying how long it lasted. The API and /metrics show the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from healthd.logs import Logger


@dataclass
class WriteHealth:
    """``name`` is the file as users know it (statuses.json, events.db)."""

    name: str
    path: str
    log: Logger | None = None
    failing_event: str = "storage_write_failed"
    consequence: str = ""
    error: str = ""  # the latest failure, while failing
    since: float | None = None  # wall time of the episode's first failure
    failures: int = 0  # failed writes since the daemon started
    episode_failures: int = 0
    last_ok: float | None = None  # wall time of the last write that succeeded

    @property
    def ok(self) -> bool:
        return self.since is None

    def failed(self, exc: BaseException, *, consequence: str | None = None) -> None:
        """A write failed; logged when an episode starts or its error changes."""
        error = _describe(exc)
        self.failures += 1
        self.episode_failures += 1
        first = self.since is None
        if first:
            self.since = time.time()
        if (first or error != self.error) and self.log is not None:
            self.log.error(
                self.failing_event,
                file=self.name,
                path=self.path,
                error=error,
                consequence=consequence or self.consequence,
                note="logged once until it recovers; /v1/status and /metrics show it meanwhile",
            )
        self.error = error

    def succeeded(self) -> None:
        """A write succeeded; ends an episode (logged) if one was going on."""
        now = time.time()
        if self.since is not None and self.log is not None:
            self.log.info(
                "storage_recovered",
                file=self.name,
                path=self.path,
                failed_for=f"{now - self.since:.1f}s",
                failed_writes=self.episode_failures,
            )
        self.since = None
        self.error = ""
        self.episode_failures = 0
        self.last_ok = now


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
