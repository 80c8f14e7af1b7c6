"""Exceptions raised by healthd.

Only ``cli.py`` turns them into exit codes; library code raises, never exits.

    HealthdError
    ├── DurationError        a duration string is not Go syntax ("30s", "1m30s", "250ms")
    ├── ConfigError          one or more problems in workload files; carries ``problems``
    ├── WorkloadNameError    a workload name that could escape a directory or is malformed
    ├── StatusFileError      statuses.json cannot be read or parsed
    ├── RestartError         a restart command failed, timed out or could not start
    ├── UnknownWorkload      no workload of that name (API: 404)
    ├── NotMonitored         configured but not checked now: disabled or broken (API: 409)
    ├── TokenFileError       the API token file is missing, loose or malformed (api/auth.py)
    ├── ApiStartError        the API cannot listen with its settings (api/service.py)
    ├── NotRunning           the CLI finds no daemon to ask (client.py)
    └── ApiCallError         the daemon answered the CLI with an error (client.py)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class HealthdError(Exception):
    """Base of every error healthd raises on purpose."""


class DurationError(HealthdError, ValueError):
    """A duration that is not in Go's time.ParseDuration syntax."""


QUOTED_CHARS = 32  # of a value quoted back from a file: enough to recognise it, not to copy it
SHOWN_CHARS = 200  # of a path or name shown in a message


def printable(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` safe to show in one log line or message: control and other unprintable
    characters escaped, at most ``limit`` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quoted(value: object, limit: int = QUOTED_CHARS) -> str:
    """A value from a file, quoted in a problem: escaped, and cut to ``limit`` characters.

    A file may hold what its writer should not learn (a link into a root-only file, a secret
    given by mistake); problems go to the log, events and the API, so they quote a short
    excerpt, never a whole line."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


@dataclass(frozen=True)
class Problem:
    """One finding about one file: rendered as ``FILE:LINE: field: reason``."""

    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class ConfigError(HealthdError):
    """Workload configuration that cannot be used; ``problems`` lists every finding."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class WorkloadNameError(HealthdError, ValueError):
    """A workload name that does not match the allowed pattern."""


class StatusFileError(HealthdError):
    """statuses.json exists but cannot be read or understood."""


class RestartError(HealthdError):
    """A restart attempt that did not succeed."""


class UnknownWorkload(HealthdError, LookupError):
    """No workload of that name is configured."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no workload named {name!r}")
        self.name = name


class NotMonitored(HealthdError):
    """The workload is configured but not checked now (disabled, or its file is broken)."""

    def __init__(self, name: str, state: str) -> None:
        super().__init__(f"workload {name!r} is not monitored now (state {state})")
        self.name = name
        self.state = state
