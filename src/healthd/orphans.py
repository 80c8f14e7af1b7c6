"""The daemon as a child subreaper, and the reaping of what it adopts.

Whatever a command leaves running when its parent exits (a ``setsid`` grandchild, a double
fork) is re-parented to the nearest subreaper: with this, the daemon rather than PID 1. That
keeps it in reach (``containment.py`` kills it with its check), and it is reaped here once dead: a
PID 1 in a container may never reap, and killed orphans would pile up as its zombies.

Only adopted processes are reaped here; a command the daemon spawned is reaped by its owner
through its pidfd (``spawn.live`` says which pids those are), never behind its back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os

from healthd import spawn

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
# Adopted processes that die on their own (a restart command's service, years later) are
# reaped within this; those killed with a check's cgroup are reaped as soon as it is empty.
SCAN_INTERVAL = 1.0


def become_subreaper() -> str:
    """Make this process a child subreaper; "" on success, else why it could not."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0
    except (OSError, AttributeError) as exc:  # no libc prctl: not Linux
        return str(exc)
    return os.strerror(ctypes.get_errno()) if failed else ""


def children() -> list[int]:
    """This process's children, zombies included (every thread's: an orphan is adopted by
    whichever thread the kernel picks)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children", "rb") as f:
                found.extend(int(word) for word in f.read().split())
    return found


def reap_adopted() -> int:
    """Reap every dead child the daemon did not spawn itself; how many.

    It runs after every contained command: usually there is no dead child at all, which one
    waitid says (the scan of ``children`` opens a file per thread of the daemon)."""
    reaped = 0
    while True:
        try:
            dead = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # no children at all
            return reaped
        if dead is None:
            return reaped
        if dead.si_pid in spawn.live:
            # Its pidfd's callback will reap it; waitid would show it first every time.
            return reaped + _reap_scanned()
        if not _reaped(dead.si_pid):
            return reaped
        reaped += 1


def _reap_scanned() -> int:
    """``reap_adopted`` by a scan of the children, which passes over the spawned ones."""
    return sum(_reaped(pid) for pid in children() if pid not in spawn.live)


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped meanwhile
        return False
    return done == pid


REAP_GROUP_FOR = 2.0  # seconds: then the periodic scan takes over


def reap_group(
    loop: asyncio.AbstractEventLoop, pgid: int, delay: float = 0.01, waited: float = 0.0
) -> None:
    """After the rest of a command's process group was killed: reap its members as they die.
    Their parent is gone, so they are the daemon's to reap (a subreaper); without this they
    would stay its zombies until the next periodic scan. Polls at doubling intervals while
    anything (zombies included) is left in the group, for REAP_GROUP_FOR at most."""
    reap_adopted()
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return  # nothing left, or the pgid is no longer ours
    if waited < REAP_GROUP_FOR:
        loop.call_later(delay, reap_group, loop, pgid, delay * 2, waited + delay)


def reap_periodically(loop: asyncio.AbstractEventLoop) -> None:
    """Reap adopted processes every SCAN_INTERVAL for as long as ``loop`` runs (a scan of a
    few /proc files: no SIGCHLD handler, which the loop's own child handling could contend
    with)."""

    def scan() -> None:
        reap_adopted()
        loop.call_later(SCAN_INTERVAL, scan)

    loop.call_later(SCAN_INTERVAL, scan)
