"""Who may do what through the API of the real daemon (``python -m healthd run``): reading is
open on loopback and the Unix socket, changing needs the token or root on the socket, and the
settings that would expose the API are refused before anything is checked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .harness import ApiClient, DaemonProc, Services, free_port, with_token, write

PAUSE = "/v1/workloads/web/pause"
NOBODY = 65534


@dataclass(frozen=True)
class Api:
    url: str
    socket: Path
    token: str | None


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory (AF_UNIX paths are at most 107 bytes) that any user may enter."""
    with tempfile.TemporaryDirectory(prefix="hd-auth-", dir="/tmp") as directory:
        os.chmod(directory, 0o755)
        yield Path(directory)


def configure(
    daemon: DaemonProc, *, token_mode: int | None = 0o600, socket_path: Path | None = None
) -> str | None:
    """The daemon config: a token file with ``token_mode`` (None: no token) and a Unix socket
    if given; returns the token."""
    if token_mode is not None:
        return with_token(daemon, socket_path=socket_path, mode=token_mode)
    daemon.daemon_config.write_text(f"api:\n  socket: {socket_path}\n" if socket_path else "")
    return None


def write_web(daemon: DaemonProc, services: Services) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port)


def start(daemon: DaemonProc, services: Services, sock_dir: Path, *, token: bool = True) -> Api:
    """The daemon with one healthy http workload "web", its API on loopback and a socket."""
    socket_path = sock_dir / "api.sock"
    secret = configure(daemon, token_mode=0o600 if token else None, socket_path=socket_path)
    write_web(daemon, services)
    daemon.start()
    url = daemon.api_url()
    ApiClient(url).wait_status("web", lambda s: s["state"] == "healthy")
    return Api(url, socket_path, secret)


def paused(api: Api) -> bool:
    status = ApiClient(api.url).get("/v1/status/web")
    return bool(status["paused"])


def exited(daemon: DaemonProc, timeout: float = 10.0) -> tuple[int, float]:
    """The daemon's exit code and how long it ran (fails if it keeps running)."""
    assert daemon.proc is not None
    started = time.monotonic()
    try:
        code = daemon.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon still runs after {timeout}s:\n{daemon.log()}")
    return code, time.monotonic() - started


def nothing_checked(daemon: DaemonProc) -> bool:
    return not (daemon.status_dir / "statuses.json").exists() and "event=healthy" not in (
        daemon.log()
    )


# -- loopback TCP ---------------------------------------------------------------------------------


def test_reading_needs_no_token_on_loopback(
    daemon: DaemonProc, services: Services, sock_dir: Path
) -> None:
    api = start(daemon, services, sock_dir)
    reply = ApiClient(api.url).call("GET", "/v1/status")
    assert reply.status == 200
    assert [w["workload"] for w in reply.body["workloads"]] == ["web"]
    assert ApiClient(api.url).call("HEAD", "/v1/status/web").status == 200


def test_a_post_without_the_right_token_is_401_and_changes_nothing(
    daemon: DaemonProc, services: Services, sock_dir: Path
) -> None:
    api = start(daemon, services, sock_dir)
    missing = ApiClient(api.url).call("POST", PAUSE)
    assert missing.status == 401
    assert missing.headers["www-authenticate"].startswith("Bearer ")
    assert "Authorization: Bearer" in missing.error()["message"]

    wrong = ApiClient(api.url, token="not-" + str(api.token)).call("POST", PAUSE)
    assert wrong.status == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert wrong.error()["message"] == "wrong API token"

    basic = ApiClient(api.url).call("POST", PAUSE, headers={"Authorization": f"Basic {api.token}"})
    assert basic.status == 401
    assert not paused(api)


def test_a_post_with_the_right_token_pauses_the_workload(
    daemon: DaemonProc, services: Services, sock_dir: Path
) -> None:
    api = start(daemon, services, sock_dir)
    reply = ApiClient(api.url, token=api.token).call("POST", PAUSE, {"reason": "deploy"})
    assert reply.status == 200, reply.text
    assert reply.body["state"] == "paused"
    assert paused(api)
    daemon.wait_status("web", lambda s: s.get("paused") is True)


def test_with_no_token_configured_a_post_is_403_explaining(
    daemon: DaemonProc, services: Services, sock_dir: Path
) -> None:
    api = start(daemon, services, sock_dir, token=False)
    reply = ApiClient(api.url, token="anything").call("POST", PAUSE)
    assert reply.status == 403
    message = reply.error()["message"]
    assert "api.token_file" in message
    assert "Unix socket as root" in message
    assert not paused(api)


# -- Unix socket ----------------------------------------------------------------------------------


def test_root_on_the_unix_socket_posts_without_a_token(
    daemon: DaemonProc, services: Services, sock_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the test speaks as root on the socket")
    api = start(daemon, services, sock_dir)
    endpoints = daemon.api_endpoints()
    assert endpoints is not None
    assert endpoints["socket"] == str(api.socket)
    reply = ApiClient(api.socket).call("POST", PAUSE)
    assert reply.status == 200, reply.text
    assert reply.body["state"] == "paused"
    assert paused(api)


# Run as another user: the stdlib's HTTP client over the socket; prints {method: [status, body]}.
UNPRIVILEGED_CLIENT = r"""
import http.client, json, socket, sys

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(sys.argv[1])

out = {}
for method, path in (("GET", "/v1/status/web"), ("POST", "/v1/workloads/web/pause")):
    conn = Conn("localhost", timeout=10)
    conn.request(method, path)
    response = conn.getresponse()
    out[method] = [response.status, json.loads(response.read() or b"null")]
    conn.close()
print(json.dumps(out))
"""


def as_nobody(setpriv: str, env: dict[str, str]) -> Callable[[Path], dict[str, Any]]:
    def run(socket_path: Path) -> dict[str, Any]:
        argv = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        argv += [sys.executable, "-I", "-c", UNPRIVILEGED_CLIENT, str(socket_path)]
        done = subprocess.run(
            argv, env=env, cwd="/", capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    return run


def test_another_user_on_the_unix_socket_may_read_but_not_post(
    daemon: DaemonProc,
    services: Services,
    sock_dir: Path,
    env: dict[str, str],
    require_binary: Callable[[str], str],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    client = as_nobody(require_binary("setpriv"), env)
    api = start(daemon, services, sock_dir)
    os.chmod(api.socket, 0o666)  # let the other user connect at all
    out = client(api.socket)
    assert out["GET"][0] == 200
    assert out["GET"][1]["workload"] == "web"
    status, body = out["POST"]
    assert status in (401, 403)
    assert body["error"]["status"] == status
    assert not paused(api)


# -- refused at start -----------------------------------------------------------------------------


def test_a_token_file_group_can_read_stops_the_start(
    daemon: DaemonProc, services: Services
) -> None:
    configure(daemon, token_mode=0o640)
    write_web(daemon, services)
    daemon.start()
    code, took = exited(daemon)
    assert code == 2
    assert took < 10
    token_file = daemon.daemon_config.with_name("api.token")
    assert f"chmod 600 {token_file}" in daemon.log()
    assert nothing_checked(daemon)


def test_listening_off_loopback_without_a_token_is_refused_before_any_check(
    daemon: DaemonProc, services: Services
) -> None:
    configure(daemon, token_mode=None)
    write_web(daemon, services)
    daemon.start("--listen", "0.0.0.0:0")
    code, _ = exited(daemon)
    assert code == 2
    log = daemon.log()
    assert "refusing to serve the API on 0.0.0.0:0" in log
    assert "api.token_file" in log
    assert "Traceback" not in log
    assert nothing_checked(daemon)


def test_a_port_in_use_stops_the_start(daemon: DaemonProc, services: Services) -> None:
    write_web(daemon, services)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon.start("--listen", f"127.0.0.1:{port}")
        code, _ = exited(daemon)
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in daemon.log()
    assert nothing_checked(daemon)


def test_an_unknown_key_in_the_daemon_config_stops_the_start_with_file_and_line(
    daemon: DaemonProc,
) -> None:
    daemon.daemon_config.write_text(
        f"api:\n  listen: 127.0.0.1:{free_port()}\n  tokenfile: /etc/healthd.token\n"
    )
    daemon.start()
    code, _ = exited(daemon)
    assert code == 2
    assert f"{daemon.daemon_config}:3: api.tokenfile: unknown key" in daemon.log()
    assert "Traceback" not in daemon.log()


def test_a_socket_another_daemon_listens_on_is_not_taken_over(
    daemon: DaemonProc, services: Services, sock_dir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    api = start(daemon, services, sock_dir)
    home = tmp_path / "second"
    home.mkdir()
    second = DaemonProc(home / "config", home / "status", env, home / "daemon.log")
    second.config_dir.mkdir()
    second.daemon_config.write_text(f"api:\n  socket: {api.socket}\n")
    try:
        second.start()
        code, _ = exited(second)
    finally:
        second.kill()
    assert code == 2
    assert f"{api.socket} is in use" in second.log()
    reply = ApiClient(api.socket).call("GET", "/v1/status/web")  # the first keeps its socket
    assert reply.status == 200
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
