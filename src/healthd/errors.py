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
