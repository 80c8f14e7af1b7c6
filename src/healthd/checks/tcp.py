"""tcp: healthy when a TCP connection to ADDRESS:PORT is accepted."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from healthd.model import CheckResult

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def connect_error(exc: OSError) -> str:
    """A short reason: asyncio's own wording ("Connect call failed (...)") hides the errno."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


class TcpCheck:
    name = "tcp"
    needs_address = True

    def fill_defaults(self, cfg: WorkloadConfig) -> WorkloadConfig:
        return cfg

    def validate(self, cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
        if not cfg.port:
            hint = " (target is not used by tcp checks)" if cfg.target else ""
            yield "port", f"required for tcp checks{hint}"

    def describe(self, cfg: WorkloadConfig, address: str) -> str:
        return f"tcp {host_port(address, cfg.port)}"

    async def run(self, cfg: WorkloadConfig, address: str) -> CheckResult:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            transport, _ = await loop.create_connection(asyncio.Protocol, address, cfg.port)
        except OSError as exc:
            return CheckResult(
                False,
                time.monotonic() - started,
                f"TCP check failed: {host_port(address, cfg.port)}: {connect_error(exc)}",
            )
        transport.close()
        return CheckResult(True, time.monotonic() - started)
