"""Replace a file so that a crash at any instant leaves either the old or the new content."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

# Not tempfile.mkstemp: importing tempfile loads shutil, bz2 and lzma, half a megabyte of
# resident memory for one call. A name unique to this process and write, created O_EXCL.
_serial = itertools.count()


def _create_temp(path: Path) -> tuple[int, str]:
    while True:
        tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{next(_serial)}.tmp"))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:  # left by an earlier process with the same pid
            continue


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over, fsync the dir."""
    directory = path.parent
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(path: Path) -> list[str]:
    """Delete the temp files of ``path`` left by processes that died mid-write (kill -9, a
    power cut): each such crash leaves one, and a crash loop would fill the disk with them.
    A temp file of a process still running is its write in progress and is left alone.
    Returns the names removed."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    removed = []
    for name in names:
        pid = name[len(prefix) : -len(".tmp")].split(".", 1)[0]
        if not (name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit()):
            continue
        if int(pid) == os.getpid() or _running(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.parent / name)
            removed.append(name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: running
    return True
