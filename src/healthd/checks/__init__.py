"""The one registry of check kinds. Config validation and the scheduler both read ``KINDS``.

Every kind offers the same small surface (``CheckKind``): its defaults, its validation, and
``probe``, which makes the long-lived ``Probe`` the scheduler starts at every check (see
``probe.py``: one deadline per start, one ``CheckResult`` through a callback, never an
exception for an unhealthy target). ``run_check`` wraps one probe run for one-off callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from healthd.checks.exec import ExecCheck
from healthd.checks.grpc import GrpcCheck
from healthd.checks.http import HttpCheck
from healthd.checks.probe import Probe
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

    def probe(self, cfg: WorkloadConfig) -> Probe:
        """A probe for ``cfg`` (defaults filled in), reused for all of its checks."""
        ...


KINDS: dict[str, CheckKind] = {
    kind.name: kind for kind in (HttpCheck(), TcpCheck(), ExecCheck(), GrpcCheck())
}


async def run_check(cfg: WorkloadConfig, address: str) -> CheckResult:
    """Run ``cfg``'s check once, with its deadline (``cfg.timeout``)."""
    probe = KINDS[cfg.type].probe(cfg)
    result: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
    try:
        probe.start(address, result.set_result)
        return await result
    finally:
        probe.close()  # cancelled: abandons the check in flight, leaving nothing behind
