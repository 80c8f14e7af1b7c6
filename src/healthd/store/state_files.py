"""The files of the status dir (statuses.json, daemon.json, events.db and SQLite's side files),
opened by a daemon that runs as root in a dir someone else may be able to write to.

- **Never through a link.** A symbolic link planted under one of their names (``events.db ->
  /etc/x``, ``events.db-wal -> /etc/x``) would have root create or overwrite its target. Such
  a link is removed (the link itself: its target is never opened) with an error in the log,
  and the file is created anew where it belongs. Files are opened with ``O_NOFOLLOW``.
- **Modes that match the API's read rule.** What the files hold (errors, sink errors, events)
  is what the API shows, so they are as readable as the API: ``0644`` while a TCP listener on
  loopback lets any local user read it, ``0640`` otherwise (the Unix socket, mode 0660 and the
  daemon's group, or a listener that wants the token). A file found with another mode is set
  to it on its open descriptor (``fchmod``), never through a path that could be swapped.
- **A status dir others can write to** is reported at start (``status_dir_unsafe``): there a
  link can be planted at any time, and one that others own can have files swapped under the
  daemon between two system calls.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from healthd.logs import Logger

OPEN_TO_LOCAL_USERS = 0o644
DAEMON_GROUP_ONLY = 0o640
# What SQLite creates beside a database: the write-ahead log, its index, a rollback journal.
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def state_file_mode(*, anyone_may_read_api: bool) -> int:
    """The mode of the status dir's files: as readable as the API (see the module's doc)."""
    return OPEN_TO_LOCAL_USERS if anyone_may_read_api else DAEMON_GROUP_ONLY


class NotAStateFile(OSError):
    """A name of the status dir holds something healthd will not use as its file (a device, a
    FIFO, a directory): it is reported, not opened."""


def remove_link(path: Path, log: Logger | None) -> bool:
    """Remove ``path`` if it is a symbolic link (never what it points to); True if it was."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISLNK(info.st_mode):
        return False
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    if log is not None:
        log.error(
            "state_file_link_removed",
            path=str(path),
            points_to=target,
            consequence="healthd never opens its files through a link (it runs as root: the "
            "link would have it write where the link points); the link is removed, its target "
            "left untouched, and the file created anew in the status dir",
        )
    return True


def open_state_file(
    path: Path, mode: int | None, log: Logger | None, *, create: bool
) -> int | None:
    """A descriptor of the regular file at ``path`` (created if ``create``), its mode set to
    ``mode`` (None: left as it is); None when there is none and ``create`` is false. A link
    there is removed first (``remove_link``). Raises NotAStateFile for anything but a
    regular file."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    if create:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(2):  # a link, removed, then the file
        remove_link(path, log)
        try:
            fd = os.open(path, flags, DAEMON_GROUP_ONLY if mode is None else mode)
            break
        except FileNotFoundError:
            return None
        except OSError as exc:
            if not _is_link_refusal(exc):
                raise
    else:
        raise NotAStateFile(f"{path}: a symbolic link was planted again as it was removed")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotAStateFile(f"{path}: not a regular file; healthd will not use it")
        if mode is not None and stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def set_mode(path: Path, mode: int, log: Logger | None) -> None:
    """Give an existing state file ``mode`` (a link there is removed, nothing is created)."""
    with contextlib.suppress(NotAStateFile):
        fd = open_state_file(path, mode, log, create=False)
        if fd is not None:
            os.close(fd)


def _is_link_refusal(exc: OSError) -> bool:
    # O_NOFOLLOW on a link: ELOOP (Linux; EMLINK on FreeBSD)
    return exc.errno in (errno.ELOOP, errno.EMLINK)


def status_dir_problem(directory: Path) -> str | None:
    """Why others could plant or swap files in the status dir, with the fix; None if they
    cannot. A root-owned sticky dir (/tmp) still lets them plant names not yet taken."""
    try:
        info = os.stat(directory)
    except OSError:
        return None
    uid = os.geteuid()
    if info.st_uid != uid:
        return (
            f"it belongs to uid {info.st_uid}, who can replace the daemon's files in it; "
            f"run: chown {uid} {directory}"
        )
    loose = stat.S_IMODE(info.st_mode)
    if loose & 0o022:
        return (
            f"mode {loose:04o} lets group or others create files in it; run: chmod go-w {directory}"
        )
    return None
