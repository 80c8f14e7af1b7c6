"""The one registry of check kinds. Config validation and the scheduler both read ``KINDS``.

Every kind offers the same small surface (``CheckKind``): its defaults, its validation, and
``run``, which returns a ``CheckResult`` and never raises for an unhealthy target. The
deadline is enforced once, here in ``run_check``; a kind only has to clean up when cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from healthd import durations
from healthd.checks.exec import ExecCheck
from healthd.checks.http import HttpCheck
from healthd.checks.tcp import TcpCheck
from healthd.model import CheckResult

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig


class CheckKind(Protocol):
    """What a check kind provides. Implementations live one per module in this package."""

    name: str
    needs_address: bool  # False: runs on the host and ignores the workload's address

    def fill_defaults(self, cfg: WorkloadConfig) -> WorkloadConfig:
        """The config with this kind's defaults filled in (e.g. http port 8080)."""
        ...

    def validate(self, cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
        """(field, reason) for each problem specific to this kind."""
        ...

    def describe(self, cfg: WorkloadConfig, address: str) -> str:
        """What is checked, for people: a URL, host:port or the command."""
        ...

    async def run(self, cfg: WorkloadConfig, address: str) -> CheckResult:
        """Check once. May be cancelled at the deadline and must then leave nothing behind."""
        ...


KINDS: dict[str, CheckKind] = {kind.name: kind for kind in (HttpCheck(), TcpCheck(), ExecCheck())}


async def run_check(cfg: WorkloadConfig, address: str) -> CheckResult:
    """Run ``cfg``'s check with its hard deadline (``cfg.timeout``)."""
    kind = KINDS[cfg.type]
    started = time.monotonic()
    try:
        async with asyncio.timeout(cfg.timeout):
            return await kind.run(cfg, address)
    except TimeoutError:
        limit = durations.format_seconds(cfg.timeout)
        error = f"timed out after {limit}: {kind.describe(cfg, address)}"
        return CheckResult(False, time.monotonic() - started, error)
