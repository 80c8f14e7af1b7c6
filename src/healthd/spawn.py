"""Start a command in a new session and open a pidfd to reap it by: the spawning half of
``process.py``, kept apart so that module is about driving a running child.

``posix_spawn`` is a vfork on Linux: no copy of the daemon's memory, no thread. A child that
must run as another user is forked instead (``spawn_as``). Both close the child's ends of the
pipes they are given, and neither leaves a child that cannot be watched.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping

from healthd.accounts import Credentials


def kill_group(pgid: int) -> bool:
    """SIGKILL the process group ``pgid``; whether anything was left in it to kill."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        # already gone, or (PermissionError) a reused pgid that is no longer ours
        return False
    return True


# Pids spawned here and not yet reaped by their owner (``reaped``): the orphan reaper
# (``orphans.py``) must leave those to their pidfds.
live: set[int] = set()


def reaped(pid: int) -> None:
    live.discard(pid)


_program_paths: dict[tuple[str, str | None], str] = {}


def program_path(name: str, search_path: str | None = None) -> str | None:
    """``name`` looked up like execvp does, on ``search_path`` (a PATH value; None: the
    daemon's own), remembered: checks spawn the same few.

    Not shutil.which: importing shutil loads the bz2 and lzma modules, half a megabyte of
    resident memory the daemon never uses."""
    if "/" in name:
        return name
    key = (name, search_path)
    found = _program_paths.get(key)
    if found is None:  # not found is not remembered: the program may be installed later
        directories = os.get_exec_path(None if search_path is None else {"PATH": search_path})
        found = next(
            (
                path
                for directory in directories
                if os.path.isfile(path := os.path.join(directory, name))
                and os.access(path, os.X_OK)
            ),
            None,
        )
        if found is not None:
            _program_paths[key] = found
    return found


_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def spawn(
    path: str, argv: list[str], env: Mapping[str, str], output: int, stdin: int = -1
) -> tuple[int, int]:
    """(pid, pidfd) of ``argv`` started in a new session with ``output`` as stdout and stderr
    and ``stdin`` (or /dev/null when -1) as stdin. Closes ``output`` and ``stdin``."""
    first: tuple[object, ...] = (
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)
        if stdin < 0
        else (os.POSIX_SPAWN_DUP2, stdin, 0)
    )
    try:
        pid = os.posix_spawn(
            path,
            argv,
            env,
            file_actions=[
                first,
                (os.POSIX_SPAWN_DUP2, output, 1),
                (os.POSIX_SPAWN_DUP2, output, 2),
            ],
            setsid=True,
            # Python ignores SIGPIPE and SIGXFSZ; a command expects them at their defaults
            # (`yes | head` must end `yes`), as subprocess's restore_signals gives them.
            setsigdef=_RESTORED_SIGNALS,
        )
    finally:
        os.close(output)
        if stdin >= 0:
            os.close(stdin)
    return pid, _watch(pid)


def _watch(pid: int) -> int:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # out of descriptors: do not leave a child we cannot watch
        kill_group(pid)
        os.waitpid(pid, 0)
        raise
    live.add(pid)
    return pidfd


def spawn_as(
    path: str,
    argv: list[str],
    env: Mapping[str, str],
    output: int,
    stdin: int,
    *,
    creds: Credentials,
) -> tuple[int, int]:
    """``spawn``, but the child switches to ``creds`` before its exec.

    posix_spawn cannot change the user, so this is subprocess's fork_exec, which sets the
    groups, then the gid, then the uid in the child (a vfork cannot: the credentials would
    change under the parent's threads), closes every other descriptor, and reports a failed
    switch or exec as an OSError here. The Popen object is only the spawner: it is marked
    done at once so that it never waits for the pid itself (our pidfd reaps it; a Popen left
    unfinished would later waitpid a pid that may by then be another child's)."""
    try:
        proc = subprocess.Popen(
            argv,
            executable=path,
            stdin=subprocess.DEVNULL if stdin < 0 else stdin,
            stdout=output,
            stderr=output,
            env=env,
            start_new_session=True,
            restore_signals=True,
            user=creds.uid,
            group=creds.gid,
            extra_groups=list(creds.groups),
        )
    finally:
        os.close(output)
        if stdin >= 0:
            os.close(stdin)
    proc.returncode = 0  # see above: reaped through the pidfd, never by Popen
    return proc.pid, _watch(proc.pid)
