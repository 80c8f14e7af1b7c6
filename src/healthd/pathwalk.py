"""Open a file named by a config the way the users who could change its path could open it.

healthd runs as root, and a workload file may come from a directory another user can write.
The kernel would let root follow any link such a user plants (``conf/sys.yaml -> /etc/shadow``)
and read what it leads to; root's permissions are not theirs. So a path is walked here one
component at a time, each opened with ``O_NOFOLLOW`` relative to the directory before it, and
every hop is judged by what was opened, never by a path resolved again later:

- Whoever could change a hop becomes an *author* of what follows: the owner of a symlink or
  of a directory passed through, the group or anyone for a directory writable by group or
  others (a root-owned sticky directory such as ``/tmp`` excepted: others cannot replace
  root's entries in it), and the owner of the file itself.
- From then on, each directory must be searchable and the file readable by every author (and
  by the ``readers`` the caller names): healthd reads only what they could read themselves,
  and a refusal says only what they could find out with ``stat``, so it is no oracle either.
- The file read is the one judged: it is opened again by name in the directory held open, and
  refused unless it is the same inode.

Strict modes (``config/trust.py``) then ask a simpler question of the same walk: was there any
author at all? Every fault found on the way is kept, with its fix, in the order met.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from healthd.errors import printable

MAX_LINKS = 40  # the kernel's own limit (ELOOP)

_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in at the last moment must not hang the reader
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class WalkRefused(OSError):
    """The path cannot be opened, or not for the readers it was walked for.

    ``strerror`` says why: the system's reason (``errno`` set), or for ``denied`` which
    reader may not follow the path, and where. ``not_regular``: it leads to something other
    than a regular file."""

    def __init__(
        self, reason: str, *, code: int = 0, denied: bool = False, not_regular: bool = False
    ) -> None:
        super().__init__(code, reason)
        self.denied = denied
        self.not_regular = not_regular

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True, order=True)
class Author:
    """Someone other than root who could change a hop of a path: a user, the members of a
    group, or any user."""

    kind: str  # "uid", "gid" or "anyone"
    id: int = -1

    def __str__(self) -> str:
        if self.kind == "uid":
            return f"uid {self.id}"
        if self.kind == "gid":
            return f"members of gid {self.id}"
        return "any local user"


ANYONE = Author("anyone")
Authors = frozenset[Author]


@dataclass
class Walk:
    """What a walk found: the file's descriptor (open for reading), where it really is, who
    besides root could have changed what was read, and each fault with its fix."""

    fd: int
    real_path: str
    authors: Authors
    faults: list[str] = field(default_factory=list)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


@functools.lru_cache(maxsize=256)
def _groups_of(uid: int) -> frozenset[int]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return frozenset()  # an id without an account: only "others" bits apply to it
    return frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))


def forget_accounts() -> None:
    """Group membership is read again on the next walk (a reload calls this)."""
    _groups_of.cache_clear()


def _may(author: Author, info: os.stat_result, want: int) -> bool:
    """Whether ``author`` has permission ``want`` (4 read, 1 search) on ``info``.

    A group's members are judged by the group's bits only when the file is that group's, and
    by the other bits otherwise: some members may have more, none has less. POSIX ACLs are
    not read.
    """
    mode = info.st_mode
    if author.kind == "uid":
        if info.st_uid == author.id:
            return bool(mode & (want << 6))
        if info.st_gid in _groups_of(author.id):
            return bool(mode & (want << 3))
    elif author.kind == "gid" and info.st_gid == author.id:
        return bool(mode & (want << 3))
    return bool(mode & want)


def _join(directory: str, name: str) -> str:
    return f"/{name}" if directory == "/" else f"{directory}/{name}"


class _Walker:
    def __init__(self, readers: Authors) -> None:
        self.readers = set(readers)
        self.euid = os.geteuid()
        self.authors: dict[Author, str] = {}  # author -> how they could change the path
        self.faults: list[str] = []
        self.dirs: list[tuple[str, int, os.stat_result]] = []  # (shown path, fd, stat)
        self.borrowed = 0  # the first dirs are a Directory's, closed by it, not here

    # -- judging -----------------------------------------------------------------------

    def _author(self, author: Author, how: str) -> None:
        self.authors.setdefault(author, how)

    def _judge_owner(self, kind: str, path: str, info: os.stat_result) -> None:
        if info.st_uid == 0:
            return
        self._author(Author("uid", info.st_uid), f"{kind} {path} is theirs")
        chown = "chown -h" if kind == "symlink" else "chown"
        self.faults.append(
            f"{kind} {path} is owned by uid {info.st_uid}, not root; fix: {chown} root {path}"
        )

    def _judge_writable(self, kind: str, path: str, info: os.stat_result) -> None:
        mode = info.st_mode
        if not mode & (stat.S_IWGRP | stat.S_IWOTH):
            return
        if kind == "directory" and mode & stat.S_ISVTX and info.st_uid == 0:
            return  # sticky and root's: others cannot replace root's entries
        how = f"they may write {kind} {path}"
        if mode & stat.S_IWGRP:
            self._author(Author("gid", info.st_gid), how)
        if mode & stat.S_IWOTH:
            self._author(ANYONE, how)
        self.faults.append(
            f"{kind} {path} is writable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"fix: chmod go-w {path}"
        )

    def _require(self, info: os.stat_result, want: int, path: str) -> None:
        """Every reader and every author so far may ``want`` (4 read, 1 search) ``path``."""
        verb = "read" if want == 4 else "search"
        for author in sorted(self.readers):
            if not _may(author, info, want):
                raise WalkRefused(
                    f"{author} may not {verb} {path}, and healthd reads for them",
                    code=errno.EACCES,
                    denied=True,
                )
        for author, how in sorted(self.authors.items()):
            if author.kind == "uid" and author.id in (info.st_uid, self.euid):
                continue  # their own (they could chmod it), or the daemon's own account
            if not _may(author, info, want):
                raise WalkRefused(
                    f"{author} may not {verb} {path}, yet could have led healthd there: {how}",
                    code=errno.EACCES,
                    denied=True,
                )

    # -- walking -----------------------------------------------------------------------

    def _pop(self) -> None:
        fd = self.dirs.pop()[1]
        if len(self.dirs) >= self.borrowed:
            os.close(fd)
        else:
            self.borrowed = len(self.dirs)

    def _reset_to_root(self) -> None:
        while len(self.dirs) > 1:
            self._pop()
        if not self.dirs:
            fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            info = os.fstat(fd)
            self.dirs.append(("/", fd, info))
            self._judge_owner("directory", "/", info)
            self._judge_writable("directory", "/", info)

    def walk(self, path: str, *, directory: bool = False) -> Walk | None:
        """Walk ``path`` from ``/``; with ``directory``, to the directory it names (None)."""
        if not path.startswith("/"):
            path = _join(os.getcwd(), path)
        self._reset_to_root()
        return self.follow(list(reversed(path.split("/"))), directory=directory)

    def follow(self, pending: list[str], *, directory: bool = False) -> Walk | None:
        """Walk on from the last directory reached, through ``pending`` (last first)."""
        links = 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            here, dir_fd, dir_info = self.dirs[-1]
            if name == "..":
                if len(self.dirs) > 1:
                    self._pop()
                continue
            self._require(dir_info, 1, here)
            shown = _join(here, printable(name))
            try:
                fd = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise WalkRefused(exc.strerror or str(exc), code=exc.errno or 0) from None
            info = os.fstat(fd)
            if stat.S_ISLNK(info.st_mode):
                try:
                    self._judge_owner("symlink", shown, info)
                    links += 1
                    if links > MAX_LINKS:
                        raise WalkRefused(os.strerror(errno.ELOOP), code=errno.ELOOP)
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                if target.startswith("/"):
                    self._reset_to_root()
                pending.extend(reversed(target.split("/")))
                continue
            if stat.S_ISDIR(info.st_mode):
                self._judge_owner("directory", shown, info)
                self._judge_writable("directory", shown, info)
                self.dirs.append((shown, fd, info))
                continue
            os.close(fd)
            if any(p not in ("", ".") for p in pending):
                raise WalkRefused(os.strerror(errno.ENOTDIR), code=errno.ENOTDIR)
            if directory:
                raise WalkRefused(os.strerror(errno.ENOTDIR), code=errno.ENOTDIR)
            return self._open_file(name, shown, info, dir_fd)
        if directory:
            return None
        raise WalkRefused(os.strerror(errno.EISDIR), code=errno.EISDIR, not_regular=True)

    def _open_file(self, name: str, shown: str, info: os.stat_result, dir_fd: int) -> Walk:
        if not stat.S_ISREG(info.st_mode):
            raise WalkRefused("not a regular file", not_regular=True)
        self._require(info, 4, shown)
        self._judge_owner("file", shown, info)
        self._judge_writable("file", shown, info)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise WalkRefused(exc.strerror or str(exc), code=exc.errno or 0) from None
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            os.close(fd)
            raise WalkRefused("replaced while it was being opened; try again", code=errno.EAGAIN)
        return Walk(fd, shown, frozenset(self.authors), self.faults)

    def close(self) -> None:
        for _, fd, _ in self.dirs[self.borrowed :]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.dirs.clear()


def open_file(path: str, readers: Authors = frozenset()) -> Walk:
    """Open ``path`` for reading as described above; ``readers``: authors known before the
    walk (those of the config file that names ``path``). Raises WalkRefused (an OSError)
    with a message that names only what the readers could see."""
    walker = _Walker(readers)
    try:
        found = walker.walk(path)
    finally:
        walker.close()
    assert found is not None
    return found


class Directory:
    """A directory walked once, for opening many files in it (a config dir at load): the
    same judgement as ``open_file`` of each file's whole path, without walking the
    directories above it again for every file."""

    def __init__(self, path: str) -> None:
        self._walker = _Walker(frozenset())
        try:
            self._walker.walk(path, directory=True)
        except BaseException:
            self._walker.close()
            raise

    def open_file(self, name: str) -> Walk:
        """Open the entry ``name`` (no ``/`` in it) as ``open_file`` would open its path."""
        base = self._walker
        walker = _Walker(frozenset())
        walker.dirs = list(base.dirs)
        walker.borrowed = len(base.dirs)
        walker.authors = dict(base.authors)
        walker.faults = list(base.faults)
        try:
            found = walker.follow([name])
        finally:
            walker.close()
        assert found is not None
        return found

    def close(self) -> None:
        self._walker.close()


@contextlib.contextmanager
def opened(path: str, readers: Authors = frozenset()) -> Iterator[Walk]:
    """``open_file`` for a ``with`` block; the descriptor is closed at its end."""
    found = open_file(path, readers)
    try:
        yield found
    finally:
        found.close()


def read_bytes(path: str, readers: Authors, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``path``, opened by ``open_file``."""
    with opened(path, readers) as found, os.fdopen(os.dup(found.fd), "rb") as fh:
        return fh.read(limit + 1)


def proc_path(found: Walk) -> str:
    """A name for the judged descriptor, for libraries that take only a path (OpenSSL): it
    opens the very inode that was judged, whatever happens to the path meanwhile."""
    return f"/proc/self/fd/{found.fd}"
