"""Files that hold secrets (the API token, a webhook's signing key): who may read and change them.

The rule is sshd's for its keys: a regular file (not a symlink, a FIFO or a directory), no
permission bit for group or others, owned by root or by the daemon's own user (whoever owns it
can change the secret). The same rule for every secret, with the fix in the message.

The daemon config file itself may hold credentials too (a sink's ``Authorization`` header, a
``user:password@`` or ``?token=`` in a URL); ``loose_credentials`` names them when that file
is readable by others, so the daemon can say so at start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from healthd.config.sinks import CREDENTIAL_NAME, SinkSettings


def problem(path: Path, info: os.stat_result, what: str) -> str | None:
    """Why ``path`` (stat ``info``) must not hold a secret, with the fix; None if it may."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_mode & 0o077:
        return (
            f"mode {stat.S_IMODE(info.st_mode):04o} lets group or others read or write it; "
            f"run: chmod 600 {path}"
        )
    owner = os.geteuid()
    if info.st_uid not in (0, owner):
        return (
            f"it belongs to uid {info.st_uid}, who could change the {what}; "
            f"run: chown {owner} {path}"
        )
    return None


def read(path: Path, what: str, at_most: int) -> bytes:
    """The content of secret file ``path``, stripped. Raises OSError (cannot open or read)
    or ValueError (the file breaks the rule, or is larger than ``at_most`` bytes)."""
    # O_NOFOLLOW: a symlink is refused, not followed to wherever it points now.
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, and the daemon with it.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        reason = problem(path, os.fstat(fd), what)  # before reading: a directory cannot be
        if reason:
            raise ValueError(reason)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(at_most + 1)
    finally:
        os.close(fd)
    if len(data) > at_most:
        raise ValueError(f"larger than {at_most} bytes")
    return data.strip()


def credentials_in(sink: SinkSettings) -> list[str]:
    """Where a sink's settings carry credentials: ``sinks.NAME.url``, ``...headers.H``."""
    found = []
    if sink.url:
        parts = urlsplit(sink.url)
        if parts.username or parts.password or parts.query:
            found.append(f"sinks.{sink.name}.url")
    found += [f"sinks.{sink.name}.headers.{h}" for h in sink.headers if CREDENTIAL_NAME.search(h)]
    return found


def loose_credentials(path: Path | None, sinks: tuple[SinkSettings, ...]) -> tuple[str, list[str]]:
    """(why, where) when the daemon config file ``path`` holds credentials (``where``) yet
    breaks the secret-file rule (``why``); ("", []) when it is fine."""
    where = [w for s in sinks for w in credentials_in(s)]
    if path is None or not where:
        return "", []
    try:
        info = os.stat(path)
    except OSError:
        return "", []
    reason = problem(path, info, "credentials")
    return (reason, where) if reason else ("", [])
