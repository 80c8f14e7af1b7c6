"""Measuring and stopping processes from outside, through /proc (Linux only).

A daemon's cost is the CPU of its whole process tree: the root and every live descendant,
found through ``/proc/PID/task/TID/children`` (children are listed per thread). CPU of children
that already exited and were reaped by a process of the tree (``cutime + cstime``, e.g. the
``sh`` of exec checks) is accounted apart.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import IO

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the bench uses; times are in seconds."""

    pid: int
    state: str
    start_ticks: int  # start time since boot: with the pid, identifies a process over time
    own_cpu: float  # utime + stime
    reaped_children_cpu: float  # cutime + cstime


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/PID/stat`` of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "PID (comm) STATE PPID ...": comm may hold spaces and parentheses, so split at the last ")"
    fields = text.rsplit(")", 1)[1].split()
    # after the ")": state=0, ..., utime=11, stime=12, cutime=13, cstime=14, starttime=19
    return ProcStat(
        pid=pid,
        state=fields[0],
        start_ticks=int(fields[19]),
        own_cpu=(int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND,
        reaped_children_cpu=(int(fields[13]) + int(fields[14])) / TICKS_PER_SECOND,
    )


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``, over all its threads."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        found.extend(int(p) for p in text.split())
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (root first); empty when ``root`` is gone."""
    if not Path(f"/proc/{root}").exists():
        return []
    seen: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children(pid))
    return seen


@dataclass(frozen=True)
class CpuSample:
    own: float  # seconds of CPU used by the live processes of the tree
    reaped_children: float  # seconds used by children the tree's processes reaped
    processes: int


def cpu_sample(root: int) -> CpuSample:
    own = reaped = 0.0
    count = 0
    for pid in process_tree(root):
        stat = read_stat(pid)
        if stat is None:
            continue
        own += stat.own_cpu
        reaped += stat.reaped_children_cpu
        count += 1
    return CpuSample(own, reaped, count)


def _status_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mb(root: int) -> float:
    """Sum of the peak resident set sizes (VmHWM) of the tree's live processes, in MiB."""
    return sum(_status_kib(pid, "VmHWM") for pid in process_tree(root)) / 1024


def identities(pids: Iterable[int]) -> list[tuple[int, int]]:
    """(pid, start time) of each live pid: enough to never signal a reused pid later."""
    out = []
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            out.append((pid, stat.start_ticks))
    return out


def kill_survivors(processes: Iterable[tuple[int, int]]) -> int:
    """SIGKILL those of ``processes`` (from ``identities``) that still run; returns how many."""
    killed = 0
    for pid, start in processes:
        stat = read_stat(pid)
        if stat is None or stat.start_ticks != start or stat.state in ("Z", "X"):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the bench dies, even SIGKILLed.

    Best effort: PR_SET_PDEATHSIG is Linux's; elsewhere, or if libc cannot be loaded, nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def spawn(argv: Sequence[str], *, stdout: IO[bytes] | int, stderr: IO[bytes] | int) -> Popen[bytes]:
    """Start ``argv`` leading a new session (so its group can be signalled as a whole), with
    no stdin, and bound to the bench's life: it gets SIGTERM if the bench dies uncleanly.
    """
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        # The bench runs no threads of its own, which is what makes preexec_fn safe here.
        preexec_fn=_die_with_parent,  # noqa: PLW1509
    )


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen[bytes], first: signal.Signals, grace: float) -> int | None:
    """Send ``first`` to the process group ``proc`` leads, SIGKILL the group after ``grace``.

    Every process of the leader's tree seen before the signal that still runs afterwards
    (a descendant in a session of its own, say) is SIGKILLed by pid. Returns the leader's exit
    status.
    """
    tree = identities(process_tree(proc.pid))
    if proc.poll() is None:
        signal_group(proc.pid, first)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)  # the unreaped leader keeps the group ours
            proc.wait()
    kill_survivors(tree)
    return proc.returncode


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a child's log, to say why it failed."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def sleep_until(deadline: float, *, step: float = 0.2, check: Callable[[], None]) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline``, calling ``check`` every ``step``."""
    while True:
        check()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(step, left))
