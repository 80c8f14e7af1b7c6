"""Strict modes: a root daemon runs commands only from files that only root can change.

An exec check or a restart command is run by root (or as the account it names, which root
picks), and so is the default restart of ``auto_restart`` (``systemctl restart`` of a unit the
file's name picks). Were the file, a symlink on the way to it, or any directory passed through,
changeable by another user, that user could make root run anything, or restart any unit. So,
like sshd's StrictModes, when healthd runs as root it refuses such a workload unless every hop
of the walk that opened the file (``pathwalk.py``: each directory from ``/``, each symlink and
where it leads, the file) is owned by root and not writable by group or others. A root-owned
directory with the sticky bit (``/tmp``) is accepted: others may add entries there but cannot
rename or remove root's.

The walk is the one the file was read through, judged by the descriptors it opened: nothing
is resolved a second time, so a link flipped while a reload runs cannot make the file judged
differ from the file read.

Workloads that run nothing (http and tcp checks without ``restart_command`` or
``auto_restart``) load from any file: the most a writer of their file could do is change
what is checked.
"""

from __future__ import annotations

import os

from healthd.config.workload import WorkloadConfig
from healthd.errors import Problem

RELAX_HINT = "or set security.strict_modes: false in the daemon config"


def applies() -> bool:
    """Strict modes matter only to a daemon that runs as root."""
    return os.geteuid() == 0


def runs_commands(cfg: WorkloadConfig) -> str | None:
    """The field that makes ``cfg`` run a command of its file's choosing, or None."""
    if cfg.type == "exec":
        return "type"
    if cfg.restart_command is not None:
        return "restart_command"
    if cfg.auto_restart:
        return "auto_restart"
    return None


_WHAT = {
    "type": "an exec check",
    "restart_command": "a restart command",
    "auto_restart": "a restart (auto_restart: true runs systemctl restart)",
}


def refusal(cfg: WorkloadConfig, file: str, faults: list[str]) -> Problem | None:
    """The problem that keeps ``cfg`` from loading under strict modes, or None. ``faults``:
    what the walk that read ``file`` found, first met first."""
    field = runs_commands(cfg)
    if field is None or not faults:
        return None
    return Problem(
        file,
        0,
        "",
        f"refused: healthd runs as root and will not run {_WHAT[field]} from a file that "
        f"others could change: {faults[0]}, {RELAX_HINT}",
    )
