"""exec: ``sh -c TARGET`` on the host; exit status 0 is healthy.

The command runs in its own process group; at the deadline (or when it exits) the whole group
is killed, so a check leaves nothing running. Output is kept up to 4 KiB for the error text.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from healthd.model import CheckResult
from healthd.process import run_process

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

OUTPUT_CAP = 4096


class ExecCheck:
    name = "exec"
    needs_address = False

    def fill_defaults(self, cfg: WorkloadConfig) -> WorkloadConfig:
        return cfg

    def validate(self, cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
        if not cfg.target:
            yield "target", "required for exec checks: the command to run with sh -c"

    def describe(self, cfg: WorkloadConfig, address: str) -> str:
        return f"sh -c {cfg.target!r}"

    async def run(self, cfg: WorkloadConfig, address: str) -> CheckResult:
        started = time.monotonic()
        # The process runner's own deadline is a backstop: run_check cancels us at cfg.timeout
        # and the runner kills the group on cancellation.
        outcome = await run_process(
            ["sh", "-c", cfg.target], cfg.timeout + 1, output_cap=OUTPUT_CAP
        )
        duration = time.monotonic() - started
        if outcome.ok:
            return CheckResult(True, duration)
        return CheckResult(False, duration, f"exec check failed: {outcome.describe()}")
