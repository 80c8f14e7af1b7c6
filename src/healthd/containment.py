"""A cgroup per command that must leave nothing behind (exec checks, sink commands, lookups),
where the host lets the daemon make them.

A process group does not hold a grandchild that calls ``setsid()``; a cgroup does, and an
unprivileged process cannot leave it. The daemon steps into a new cgroup of its own subtree,
spawns the command there (the child is born in it: no window in which it could fork outside)
and steps back: two migrations, whose cost grows with the daemon's threads (about 0.09 ms of
CPU for both with the 8 it has here). At the deadline, ``cgroup.kill`` (Linux 5.14) kills all
the cgroup contains at once; when the command ends, so does what it left there, if anything.
Once seen empty the cgroup is kept for a later command (making and removing one each time
cost more than the migrations), and what the daemon adopted (``orphans.py``) is reaped.

Enabled when cgroup v2 is mounted, the daemon's cgroup is writable and the daemon can move
itself in and out of a child cgroup (root, and no controllers enabled for its subtree: under
systemd, a service's own cgroup). Elsewhere (a read-only /sys/fs/cgroup in a container, cgroup
v1 only) commands run as before, killed by process group; ``why_not`` says why.

Restart commands are not contained: starting a service that outlives them is their job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import time
from pathlib import Path

from healthd import orphans

_PREFIX = "healthd-"  # the daemon's directory in its cgroup: healthd-PID
_EMPTY_POLL = 0.01  # s, first wait for a killed cgroup to empty; doubles up to _EMPTY_GIVE_UP
_EMPTY_GIVE_UP = 5.0  # s in all: a process stuck in the kernel (D state) can take that long
# Empty cgroups kept for reuse: making and removing one per command cost more than moving the
# daemon in and out. Beyond this many idle at once (a burst of concurrent commands is over),
# they are removed.
_IDLE_KEPT = 32


def _cgroup2_directory() -> Path | None:
    """The directory of this process's cgroup v2, or None (no cgroup v2 mounted)."""
    try:
        own = next(
            line[3:]
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if line.startswith("0::")
        )
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except (OSError, StopIteration):
        return None
    for line in mounts:
        fields = line.split()
        dash = fields.index("-")
        if fields[dash + 1] == "cgroup2":
            root, mount_point = fields[3], fields[4]
            if own == root or own.startswith(root.rstrip("/") + "/"):
                relative = own[len(root) :].lstrip("/")
                return Path(mount_point, relative)
    return None


def _write(path: str | Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _populated(path: str) -> bool:
    """Whether a process is still in ``path`` (or in a cgroup below it). A process that has
    exited is not, even while its parent has yet to reap it."""
    fd = os.open(f"{path}/cgroup.events", os.O_RDONLY)
    try:
        return b"populated 1" in os.read(fd, 256)
    finally:
        os.close(fd)


class Cgroups:
    __slots__ = ("_count", "_home", "_home_procs", "_idle", "_parent", "_stuck_in", "why_not")

    def __init__(self) -> None:
        # Paths are str, not Path: they are joined on every command, and pathlib costs.
        self._home: str | None = None  # the daemon's own cgroup
        self._home_procs = ""  # its cgroup.procs
        self._parent: str | None = None  # home/healthd-PID: the commands' cgroups go here
        self._count = 0
        self._idle: list[str] = []  # empty cgroups of commands that are over, to reuse
        self._stuck_in: str | None = None  # a cgroup the daemon could not step out of
        self.why_not = "not enabled"

    @property
    def active(self) -> bool:
        return self._parent is not None

    @property
    def parent(self) -> str | None:
        return self._parent

    def enable(self) -> bool:
        """Use a cgroup per command from now on, if the host allows it (``why_not`` if not)."""
        home = _cgroup2_directory()
        if home is None:
            self.why_not = "no cgroup v2 hierarchy"
            return False
        _remove_stale(home)
        parent = home / f"{_PREFIX}{os.getpid()}"
        try:
            parent.mkdir(exist_ok=True)
            trial = parent / "trial"
            trial.mkdir(exist_ok=True)
            if not (trial / "cgroup.kill").exists():  # the root cgroup has none: look here
                trial.rmdir()
                parent.rmdir()
                self.why_not = f"{home}: no cgroup.kill (Linux 5.14 or later needed)"
                return False
            _write(trial / "cgroup.procs", b"0")
            try:
                _write(home / "cgroup.procs", b"0")
            except OSError:
                self._stuck_in = str(trial)  # never killed: the daemon is in it
                raise
            trial.rmdir()
        except OSError as exc:
            self.why_not = f"{home}: {exc.strerror or exc}"
            with contextlib.suppress(OSError):
                parent.rmdir()
            return False
        self._home, self._parent = str(home), str(parent)
        self._home_procs = f"{home}/cgroup.procs"
        self.why_not = ""
        return True

    def take(self) -> str:
        """An empty cgroup for one command: an idle one, or a new one (OSError if it cannot
        be made)."""
        if self._idle:
            return self._idle.pop()
        assert self._parent is not None
        self._count += 1
        path = f"{self._parent}/{self._count}"
        os.mkdir(path)
        return path

    def enter(self, path: str) -> None:
        """Move the daemon (every thread of it) into ``path``: what it spawns now is born
        there. ``leave`` must follow at once."""
        _write(f"{path}/cgroup.procs", b"0")  # "0": the writing process

    def leave(self, path: str) -> None:
        """Back home from ``path``. Should that fail, nothing is contained any more, and
        ``path`` is never killed: the daemon is in it."""
        assert self._home is not None
        try:
            _write(self._home_procs, b"0")
        except OSError as exc:
            self._stuck_in = path
            self._parent = None
            self.why_not = f"could not leave {path}: {exc.strerror or exc}"

    def kill(self, path: str) -> None:
        """SIGKILL everything in ``path`` at once (never the cgroup the daemon is in)."""
        if path == self._stuck_in:
            return
        with contextlib.suppress(OSError):  # gone already
            _write(f"{path}/cgroup.kill", b"1")

    def release(self, path: str, loop: asyncio.AbstractEventLoop, waited: float = 0.0) -> None:
        """``path``'s command is over: kill what is left in it, and once it is empty (a killed
        process leaves as it dies) keep it for the next command, then reap what the daemon
        adopted from it. A cgroup is never reused before it is seen empty; one still busy
        after _EMPTY_GIVE_UP is left to ``close`` (or to the next start, as stale)."""
        if path == self._stuck_in:
            return
        try:
            busy = _populated(path)
        except OSError:  # removed behind our back: nothing to reuse
            orphans.reap_adopted()
            return
        if busy:
            # Most commands leave nothing: a cgroup seen empty needs no kill, and no wait.
            if waited == 0.0:
                self.kill(path)
            if waited < _EMPTY_GIVE_UP:
                wait = max(waited * 2, _EMPTY_POLL)
                loop.call_later(wait, self.release, path, loop, waited + wait)
            return
        if self._parent is not None and len(self._idle) < _IDLE_KEPT:
            self._idle.append(path)
        else:
            with contextlib.suppress(OSError):
                os.rmdir(path)
        orphans.reap_adopted()

    def close(self) -> None:
        """At exit: kill and remove every command cgroup left, then the daemon's directory."""
        parent, self._parent = self._parent, None
        self._idle.clear()
        if parent is not None:
            _remove_tree(Path(parent))


def _remove_tree(parent: Path, wait: float = 1.0) -> None:
    """Kill every cgroup in ``parent`` and remove them and it, reaping what dies, for at most
    ``wait`` seconds (a process stuck in the kernel may take longer: the next start removes
    what is left, as stale)."""
    try:
        children = [child for child in parent.iterdir() if child.is_dir()]
    except OSError:
        return
    for child in children:
        with contextlib.suppress(OSError):
            _write(child / "cgroup.kill", b"1")
    give_up = time.monotonic() + wait
    while True:
        left = []
        for child in children:
            try:
                child.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(child)
        orphans.reap_adopted()
        children = left
        if not left or time.monotonic() > give_up:
            break
        select.select([], [], [], _EMPTY_POLL)  # not time.sleep: see the clock test's note
    with contextlib.suppress(OSError):
        parent.rmdir()


def _remove_stale(home: Path) -> None:
    """Directories left by a daemon that died without removing them (its pid is gone)."""
    with contextlib.suppress(OSError):
        for entry in home.iterdir():
            number = entry.name.removeprefix(_PREFIX)
            stale = number.isdigit() and (
                int(number) == os.getpid() or not Path(f"/proc/{number}").exists()
            )
            if entry.name.startswith(_PREFIX) and stale:
                _remove_tree(entry, wait=0.2)


cgroups = Cgroups()


def contain_commands(*, use_cgroups: bool = True) -> dict[str, str]:
    """Become a subreaper and use a cgroup per command where the host allows (and
    ``use_cgroups``: ``security.cgroup_per_command``); what was got, as log fields."""
    refused = orphans.become_subreaper()
    got = {"subreaper": f"no: {refused}" if refused else "yes"}
    if not use_cgroups:
        got["cgroups"] = "no: security.cgroup_per_command is false"
    elif cgroups.enable():
        got["cgroups"] = str(cgroups.parent)
    else:
        got["cgroups"] = f"no: {cgroups.why_not}"
    return got
