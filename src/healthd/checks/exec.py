"""exec: ``sh -c TARGET`` on the host; exit status 0 is healthy.

The command runs in its own process group; at the deadline (or when it exits) the whole group
is killed, so a check leaves nothing running. Output is kept up to 4 KiB for the error text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

from healthd.checks.probe import Probe
from healthd.process import Child, ProcessOutcome

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

OUTPUT_CAP = 4096


class ExecProbe(Probe):
    __slots__ = (
        "_argv",
        "_child",
    )

    def __init__(self, cfg: WorkloadConfig) -> None:
        super().__init__(cfg)
        self._argv = ("sh", "-c", cfg.target)
        self._child: Child | None = None

    def describe(self) -> str:
        return f"sh -c {self.cfg.target!r}"

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        self._child = Child(self._argv, self._exited, output_cap=OUTPUT_CAP)

    def _exited(self, outcome: ProcessOutcome) -> None:
        self._child = None
        if outcome.ok:
            self._finish(True)
        else:
            self._finish(False, f"exec check failed: {outcome.describe()}")

    def _abort(self) -> None:
        # Reported as a timeout by the probe; the child kills its group and reaps itself.
        child, self._child = self._child, None
        if child is not None:
            child.detach()


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

    def probe(self, cfg: WorkloadConfig) -> ExecProbe:
        return ExecProbe(cfg)
