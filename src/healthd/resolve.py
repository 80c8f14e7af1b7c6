"""Where to send a workload's check: its ``host``, else ``machinectl show``, else 127.0.0.1.

The fallback is the reference's, but never silent: the returned ``Address`` says how it was
found and, for a fallback, why the lookup failed, and the status shows both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from healthd import durations
from healthd.process import ProcessOutcome, run_process

FALLBACK = "127.0.0.1"
MAX_REASON = 300  # machinectl's own words, kept short: they end up in every status


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
            return Address(FALLBACK, f"fallback: {self.program}: {self._why(outcome)}")
        for line in outcome.output.splitlines():
            if line.startswith("Addresses="):
                parts = line.removeprefix("Addresses=").split()
                if parts:
                    return Address(parts[0], "machinectl")
        return Address(FALLBACK, f"fallback: {self.program} reported no address")

    def _why(self, outcome: ProcessOutcome) -> str:
        """One line for the status: what went wrong, with what machinectl said."""
        if outcome.timed_out:
            wait = durations.format_seconds(self.timeout)
            why = f"no answer within {wait}, process group killed"
            out = outcome.output
        elif outcome.spawn_error:  # "machinectl: No such file or directory": name it once
            return outcome.spawn_error.removeprefix(f"{self.program}: ")
        else:
            why, out = outcome.describe(), ""
        text = " ".join(f"{why}: {out}".split()) if out.strip() else " ".join(why.split())
        return text[:MAX_REASON] + ("..." if len(text) > MAX_REASON else "")
