"""Restarting a workload: its ``restart_command``, else ``systemctl restart UNIT``.

``Actuator`` is the extension point; ``CommandActuator`` is the one healthd ships. A restart
runs with a deadline in its own process group (killed whole at the deadline), and what it is
allowed to leave running is exactly what it started: it is not cleaned up after a success.
"""

from __future__ import annotations

import errno
from typing import Protocol

from healthd import durations
from healthd.config.workload import WorkloadConfig
from healthd.errors import RestartError
from healthd.process import run_process

DEFAULT_UNIT_TEMPLATE = "volt-container@{workload}.service"


class Actuator(Protocol):
    """Restarts workloads. ``restart`` returns on success and raises RestartError otherwise."""

    async def restart(self, cfg: WorkloadConfig) -> None: ...


class CommandActuator:
    def __init__(self, unit_template: str = DEFAULT_UNIT_TEMPLATE, timeout: float = 60.0) -> None:
        self.unit_template = unit_template
        self.timeout = timeout

    def argv(self, cfg: WorkloadConfig) -> list[str]:
        custom = cfg.restart_argv()
        if custom is not None:
            return custom
        return ["systemctl", "restart", self.unit_template.replace("{workload}", cfg.workload)]

    async def restart(self, cfg: WorkloadConfig) -> None:
        argv = self.argv(cfg)
        outcome = await run_process(argv, self.timeout, kill_leftovers=False)
        if outcome.timed_out:
            # What it printed before it hung ("waiting for lock ...") is often the why.
            said = " ".join(outcome.output.split())
            raise RestartError(
                f"{argv[0]}: no result within {durations.format_seconds(self.timeout)}, "
                "process group killed" + (f": {said}" if said else "")
            )
        if outcome.spawn_error:  # it names the program already
            if outcome.spawn_errno == errno.ENOENT and "/" not in argv[0]:
                raise RestartError(f"{argv[0]}: command not found on the daemon's PATH")
            raise RestartError(outcome.spawn_error)
        if not outcome.ok:
            raise RestartError(f"{' '.join(argv)}: {outcome.describe()}")
