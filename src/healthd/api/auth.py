"""Who may do what through the API.

- Reading (GET/HEAD) is open on a loopback listener and on the Unix socket (its file mode,
  0660, already decides who can connect). On any other listener every call but /healthz
  needs the token, and listening there without a token is refused at start.
- Changing anything (POST) needs ``Authorization: Bearer TOKEN``, or a Unix-socket peer whose
  uid is 0 or the daemon's own (SO_PEERCRED): root on the host needs no token file.
- The token file must not be readable or writable by group or others.
"""

from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from healthd.api.http import HttpError, Request
from healthd.errors import HealthdError

OPEN_PATHS = frozenset({"/healthz"})


class TokenFileError(HealthdError):
    """The API token file cannot be used."""


def read_token(path: Path) -> bytes:
    """The token in ``path``; raises TokenFileError naming the fix."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenFileError(f"api.token_file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"api.token_file {path}: not a regular file")
        if info.st_mode & 0o077:
            raise TokenFileError(
                f"api.token_file {path}: mode {stat.S_IMODE(info.st_mode):04o} lets group or "
                f"others read it; run: chmod 600 {path}"
            )
        token = fh.read(4097).strip()
    if not token:
        raise TokenFileError(f"api.token_file {path}: the file is empty")
    if len(token) > 4096 or any(c <= 0x20 or c >= 0x7F for c in token):
        raise TokenFileError(
            f"api.token_file {path}: the token must be one line of printable ASCII, "
            "at most 4096 characters"
        )
    return token


@dataclass(frozen=True)
class Authorizer:
    token: bytes | None
    loopback: bool  # the TCP listener is on a loopback address
    own_uid: int = -1

    def check(self, request: Request) -> None:
        """Raise HttpError 401/403 unless ``request`` may go on."""
        if request.path in OPEN_PATHS:
            return
        reading = request.method in ("GET", "HEAD")
        if reading and (request.peer.unix or self.loopback):
            return
        if request.peer.unix and request.peer.uid in (0, self.own_uid):
            return
        self._require_token(request, reading)

    def _require_token(self, request: Request, reading: bool) -> None:
        if self.token is None:
            how = "over the Unix socket as root" if not reading else "from loopback"
            raise HttpError(
                403,
                "this call needs the API token, and none is configured (api.token_file); "
                f"or call {how}",
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HttpError(
                401,
                "this call needs 'Authorization: Bearer TOKEN' (the token in api.token_file)",
                [("WWW-Authenticate", 'Bearer realm="healthd"')],
            )
        if not hmac.compare_digest(given.strip().encode("latin-1"), self.token):
            raise HttpError(
                401,
                "wrong API token",
                [("WWW-Authenticate", 'Bearer realm="healthd", error="invalid_token"')],
            )
