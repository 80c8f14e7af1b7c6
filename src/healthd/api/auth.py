"""Who may do what through the API.

- The status page (``/`` and ``/ui/...``: static files, no data) and /healthz are open.
- Reading (GET/HEAD) is open on a loopback listener and on the Unix socket (its file mode,
  0660, already decides who can connect). On any other listener every call but /healthz
  needs the token, and listening there without a token is refused at start.
- Changing anything (POST) needs ``Authorization: Bearer TOKEN``, or a Unix-socket peer whose
  uid is 0 or the daemon's own (SO_PEERCRED): root on the host needs no token file. Never a
  TCP peer's uid, though the kernel says it for loopback clients (budgets use it): a web page
  in a browser run by root could then change things with a POST to 127.0.0.1.
- The token file must not be readable or writable by group or others, and must belong to
  root or to the daemon's own user: whoever owns it can change the token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from healthd import secret_file
from healthd.api.messages import HttpError, Request
from healthd.api.ui import ASSET_PATHS
from healthd.errors import HealthdError

# /healthz for probes; the status page and its files hold no data (the page reads the API,
# sending the token itself) and a browser cannot send a bearer token to load them.
OPEN_PATHS = frozenset({"/healthz", "/", *ASSET_PATHS})


class TokenFileError(HealthdError):
    """The API token file cannot be used."""


def read_token(path: Path) -> bytes:
    """The token in ``path``; raises TokenFileError naming the fix."""
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, and the daemon with it.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise TokenFileError(f"api.token_file {path}: {exc.strerror or exc}") from None
    try:
        _check_file(path, os.fstat(fd))  # first: fdopen raises IsADirectoryError for a directory
        with os.fdopen(fd, "rb", closefd=False) as fh:
            token = fh.read(4097).strip()
    finally:
        os.close(fd)
    if not token:
        raise TokenFileError(f"api.token_file {path}: the file is empty")
    if len(token) > 4096 or any(c <= 0x20 or c >= 0x7F for c in token):
        raise TokenFileError(
            f"api.token_file {path}: the token must be one line of printable ASCII, "
            "at most 4096 characters"
        )
    return token


def _check_file(path: Path, info: os.stat_result) -> None:
    reason = secret_file.problem(path, info, "token")
    if reason:
        raise TokenFileError(f"api.token_file {path}: {reason}")


@dataclass(frozen=True)
class Authorizer:
    token: bytes | None
    loopback: bool  # the TCP listener is on a loopback address
    own_uid: int | None = None  # the daemon's; None: only root is trusted on the socket

    def check(self, request: Request) -> None:
        """Raise HttpError 401/403 unless ``request`` may go on."""
        if request.path in OPEN_PATHS:
            return
        reading = request.method in ("GET", "HEAD")
        if reading and (request.peer.unix or self.loopback):
            return
        if (
            request.peer.unix
            and request.peer.uid is not None
            and request.peer.uid in (0, self.own_uid)
        ):
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
        import hmac  # noqa: PLC0415  (hashlib and OpenSSL's digests: only when a token is sent)

        if not hmac.compare_digest(given.strip().encode("latin-1"), self.token):
            raise HttpError(
                401,
                "wrong API token",
                [("WWW-Authenticate", 'Bearer realm="healthd", error="invalid_token"')],
            )
