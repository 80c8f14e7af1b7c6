"""Strict modes: a root daemon runs commands only from files that only root can change.

An exec check or a restart command is run by root (or as the account it names, which root
picks). Were its file, or any directory above it, writable by another user, that user could
make root run anything. So, like sshd's StrictModes, when healthd runs as root it refuses such
a workload unless the file and every directory from the file up to ``/`` are owned by root and
not writable by group or others. A root-owned directory with the sticky bit (``/tmp``) is
accepted: others may add entries there but cannot rename or remove root's. A workload file that
is a symlink must be root's too, and its target is judged where it really is.

Workloads that run nothing (http and tcp checks without restart_command) load from any file:
the most a writer of their file could do is change what is checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
    return None


def _fault(path: str, info: os.stat_result, *, kind: str) -> str | None:
    """Why ``path`` (described by ``info``) could be changed by someone but root, with the fix."""
    if info.st_uid != 0:
        return f"{kind} {path} is owned by uid {info.st_uid}, not root; fix: chown root {path}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if kind == "directory" and info.st_mode & stat.S_ISVTX:
            return None  # sticky and root's: others cannot replace root's entries
        mode = stat.S_IMODE(info.st_mode)
        return (
            f"{kind} {path} is writable by group or others (mode {mode:04o}); "
            f"fix: chmod go-w {path}"
        )
    return None


def _chain(directory: str) -> list[str]:
    """``directory`` and each directory above it, up to ``/``."""
    out = [directory]
    while (parent := os.path.dirname(out[-1])) != out[-1]:
        out.append(parent)
    return out


def untrusted(file: Path) -> str | None:
    """Why commands from ``file`` must not be run by root, with the fix; None if only root
    can change the file and every directory above it (where the file is listed and, for a
    symlink, where it really is)."""
    try:
        link = os.lstat(file)
        if stat.S_ISLNK(link.st_mode) and link.st_uid != 0:
            return (
                f"symlink {file} is owned by uid {link.st_uid}, not root; fix: chown -h root {file}"
            )
        real = os.path.realpath(file)
        reason = _fault(real, os.stat(real), kind="file")
        # where the file is listed, as named (a symlinked config dir's own parent included)
        # and as resolved, then where the file really is
        chains = (
            _chain(os.path.abspath(file.parent)),
            _chain(os.path.realpath(file.parent)),
            _chain(os.path.dirname(real)),
        )
        for directory in dict.fromkeys(d for chain in chains for d in chain):
            if reason is not None:
                break
            reason = _fault(directory, os.stat(directory), kind="directory")
    except OSError as exc:
        return f"cannot check who may change {file}: {exc.strerror or exc}"
    return reason


def refusal(cfg: WorkloadConfig, file: Path) -> Problem | None:
    """The problem that keeps ``cfg`` from loading under strict modes, or None."""
    field = runs_commands(cfg)
    if field is None:
        return None
    reason = untrusted(file)
    if reason is None:
        return None
    what = "an exec check" if field == "type" else "a restart command"
    return Problem(
        str(file),
        0,
        "",
        f"refused: healthd runs as root and will not run {what} from a file that others "
        f"could change: {reason}, {RELAX_HINT}",
    )
