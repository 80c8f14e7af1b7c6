"""Where to send a workload's check: its ``host``, else ``machinectl show``, else 127.0.0.1.

The fallback is the reference's, but never silent: the returned ``Address`` says how it was
found and, for a fallback, why the lookup failed, and the status shows both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from healthd.process import run_process

FALLBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    source: str  # "host" (config), "machinectl", or "fallback: <why the lookup failed>"

    @property
    def is_fallback(self) -> bool:
        return self.source.startswith("fallback")


class Resolver(Protocol):
    """Maps a workload name to the address its checks go to."""

    async def resolve(self, workload: str) -> Address: ...


class MachinectlResolver:
    """``machinectl show WORKLOAD -p Addresses``: the first address, with a deadline."""

    def __init__(self, timeout: float = 2.0, program: str = "machinectl") -> None:
        self.timeout = timeout
        self.program = program

    async def resolve(self, workload: str) -> Address:
        outcome = await run_process(
            [self.program, "show", workload, "-p", "Addresses"], self.timeout, output_cap=4096
        )
        if not outcome.ok:
            why = outcome.describe() or "failed"
            return Address(FALLBACK, f"fallback: machinectl {why}".strip())
        for line in outcome.output.splitlines():
            if line.startswith("Addresses="):
                parts = line.removeprefix("Addresses=").split()
                if parts:
                    return Address(parts[0], "machinectl")
        return Address(FALLBACK, "fallback: machinectl reported no address")
