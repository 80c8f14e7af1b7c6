"""The API's authorization: reading the token file (``read_token``) and who may make which call
(``Authorizer.check``, on hand-built requests: it is pure logic)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from healthd.api.auth import Authorizer, TokenFileError, read_token
from healthd.api.messages import HttpError, Peer, Request

TOKEN = b"s3cret-Token_0123456789"


def token_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "api.token"
    path.write_bytes(content)
    path.chmod(mode)
    return path


# -- read_token -----------------------------------------------------------------------------------


def test_read_token_returns_the_token_without_its_newline(tmp_path: Path) -> None:
    assert read_token(token_file(tmp_path, TOKEN + b"\n")) == TOKEN


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\t\n"])
def test_read_token_refuses_an_empty_file(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(TokenFileError, match="the file is empty"):
        read_token(token_file(tmp_path, content))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660, 0o644])
def test_read_token_refuses_a_file_group_or_others_can_use(tmp_path: Path, mode: int) -> None:
    path = token_file(tmp_path, TOKEN, mode)
    with pytest.raises(TokenFileError) as caught:
        read_token(path)
    message = str(caught.value)
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message


def test_read_token_accepts_an_owner_only_read_mode(tmp_path: Path) -> None:
    assert read_token(token_file(tmp_path, TOKEN, 0o400)) == TOKEN


def test_read_token_refuses_a_symlink_even_to_a_good_file(tmp_path: Path) -> None:
    good = token_file(tmp_path, TOKEN)
    link = tmp_path / "link.token"
    link.symlink_to(good)
    with pytest.raises(TokenFileError, match="symbolic links") as caught:
        read_token(link)
    assert str(link) in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        b"two words",
        b"line1\nline2",
        b"nul\x00inside",
        b"tab\tinside",
        b"del\x7f",
        "t\u00f6k\u00e9n".encode(),
        b"x" * 4097,
    ],
)
def test_read_token_refuses_anything_but_one_printable_ascii_word(
    tmp_path: Path, content: bytes
) -> None:
    with pytest.raises(TokenFileError, match="printable ASCII"):
        read_token(token_file(tmp_path, content))


def test_read_token_accepts_the_longest_token(tmp_path: Path) -> None:
    assert read_token(token_file(tmp_path, b"x" * 4096 + b"\n")) == b"x" * 4096


def test_read_token_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="No such file") as caught:
        read_token(tmp_path / "nope")
    assert "api.token_file" in str(caught.value)


def test_read_token_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(TokenFileError, match="not a regular file"):
        read_token(directory)


@pytest.fixture
def deadline() -> Iterator[None]:
    """Interrupt the test with TimeoutError after 5 s (a blocking open would hang it)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("still blocked after 5 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("deadline")
def test_read_token_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "api.token"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(TokenFileError, match="not a regular file"):
        read_token(fifo)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_read_token_refuses_a_file_another_user_owns(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN)
    os.chown(path, 65534, 65534)
    with pytest.raises(TokenFileError, match="belongs to uid 65534") as caught:
        read_token(path)
    assert f"chown 0 {path}" in str(caught.value)


# -- Authorizer.check -----------------------------------------------------------------------------

OWN_UID = 1234


def request(
    method: str,
    path: str = "/v1/workloads/web/pause",
    *,
    unix: bool = False,
    uid: int | None = None,
    authorization: str | None = None,
) -> Request:
    headers = {} if authorization is None else {"authorization": authorization}
    if unix:
        peer = Peer(unix=True, uid=uid, uid_source="SO_PEERCRED" if uid is not None else None)
    else:  # the uid of a loopback TCP client, as the kernel says it (sock_diag)
        peer = Peer(
            unix=False,
            host="127.0.0.1",
            uid=uid,
            uid_source="sock_diag" if uid is not None else None,
        )
    return Request(method, path, {}, headers, b"", peer, "unix" if unix else "tcp")


def refused(authorizer: Authorizer, req: Request) -> HttpError:
    with pytest.raises(HttpError) as caught:
        authorizer.check(req)
    return caught.value


LOOPBACK = Authorizer(TOKEN, loopback=True, own_uid=OWN_UID)
LOOPBACK_NO_TOKEN = Authorizer(None, loopback=True, own_uid=OWN_UID)
EXPOSED = Authorizer(TOKEN, loopback=False, own_uid=OWN_UID)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("authorizer", [LOOPBACK, LOOPBACK_NO_TOKEN])
def test_reading_is_open_on_loopback(authorizer: Authorizer, method: str) -> None:
    authorizer.check(request(method, "/v1/status"))


@pytest.mark.parametrize("uid", [0, OWN_UID, 65534, None])
def test_reading_is_open_on_the_unix_socket_to_anyone_who_can_connect(uid: int | None) -> None:
    LOOPBACK.check(request("GET", "/v1/status", unix=True, uid=uid))
    EXPOSED.check(request("GET", "/v1/status", unix=True, uid=uid))


def test_a_post_without_authorization_is_401_with_www_authenticate() -> None:
    error = refused(LOOPBACK, request("POST"))
    assert error.status == 401
    assert ("WWW-Authenticate", 'Bearer realm="healthd"') in error.headers
    assert "Authorization: Bearer" in error.message


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong",
        "Bearer " + TOKEN.decode()[:-1],  # a prefix is not the token
        "Bearer " + TOKEN.decode() + "x",
        "Basic " + TOKEN.decode(),
        "Bearer",
        "Bearer ",
        TOKEN.decode(),
    ],
)
def test_a_post_with_a_wrong_or_malformed_token_is_401(authorization: str) -> None:
    error = refused(LOOPBACK, request("POST", authorization=authorization))
    assert error.status == 401
    assert any(name == "WWW-Authenticate" for name, _ in error.headers)


@pytest.mark.parametrize("uid", [0, OWN_UID])
@pytest.mark.parametrize("authorizer", [LOOPBACK, LOOPBACK_NO_TOKEN, EXPOSED])
def test_root_over_tcp_still_needs_the_token(authorizer: Authorizer, uid: int) -> None:
    """The kernel names a loopback TCP client's uid, but a page in root's browser is root's
    too: only the Unix socket's uid stands for the token."""
    error = refused(authorizer, request("POST", uid=uid))
    assert error.status == (401 if authorizer.token else 403)


def test_a_wrong_token_says_invalid_token() -> None:
    error = refused(LOOPBACK, request("POST", authorization="Bearer wrong"))
    assert error.message == "wrong API token"
    assert ("WWW-Authenticate", 'Bearer realm="healthd", error="invalid_token"') in error.headers


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_a_post_with_the_right_token_may_go_on(scheme: str) -> None:
    LOOPBACK.check(request("POST", authorization=f"{scheme} {TOKEN.decode()}"))
    LOOPBACK.check(request("POST", authorization=f"{scheme}  {TOKEN.decode()} "))


def test_a_post_with_no_token_configured_is_403_explaining() -> None:
    error = refused(LOOPBACK_NO_TOKEN, request("POST", authorization="Bearer anything"))
    assert error.status == 403
    assert "api.token_file" in error.message
    assert "Unix socket as root" in error.message


@pytest.mark.parametrize("uid", [0, OWN_UID])
@pytest.mark.parametrize("authorizer", [LOOPBACK, LOOPBACK_NO_TOKEN, EXPOSED])
def test_root_or_the_daemons_user_on_the_unix_socket_needs_no_token(
    authorizer: Authorizer, uid: int
) -> None:
    authorizer.check(request("POST", unix=True, uid=uid))


@pytest.mark.parametrize("uid", [65534, None])
def test_another_user_on_the_unix_socket_needs_the_token_to_post(uid: int | None) -> None:
    assert refused(LOOPBACK, request("POST", unix=True, uid=uid)).status == 401
    assert refused(LOOPBACK_NO_TOKEN, request("POST", unix=True, uid=uid)).status == 403
    LOOPBACK.check(request("POST", unix=True, uid=uid, authorization=f"Bearer {TOKEN.decode()}"))


def test_default_own_uid_does_not_let_an_unknown_peer_in() -> None:
    authorizer = Authorizer(TOKEN, loopback=True)  # own_uid not given
    assert refused(authorizer, request("POST", unix=True, uid=None)).status == 401


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/v1/status", "/metrics", "/v1/openapi.json", "/v1/history"])
def test_off_loopback_even_reading_needs_the_token(method: str, path: str) -> None:
    assert refused(EXPOSED, request(method, path)).status == 401
    assert refused(EXPOSED, request(method, path, authorization="Bearer wrong")).status == 401
    EXPOSED.check(request(method, path, authorization=f"Bearer {TOKEN.decode()}"))


def test_off_loopback_healthz_stays_open() -> None:
    EXPOSED.check(request("GET", "/healthz"))
    EXPOSED.check(request("HEAD", "/healthz"))


@pytest.mark.parametrize("path", ["/", "/ui/app.js", "/ui/app.css", "/ui/icon.svg"])
def test_off_loopback_the_status_page_loads_without_a_token(path: str) -> None:
    """A browser cannot send a bearer token to load a page; the page's files hold no data,
    and the page then sends the token itself for the API."""
    EXPOSED.check(request("GET", path))


@pytest.mark.parametrize("path", ["/v1/status", "/v1/history", "/ui/other.js", "/ui/"])
def test_off_loopback_what_is_not_the_page_still_needs_the_token(path: str) -> None:
    assert refused(EXPOSED, request("GET", path)).status == 401
