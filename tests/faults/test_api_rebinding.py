"""DNS rebinding against the real daemon: a request that names another server in its Host
(what a browser sends after a page's name is re-pointed at 127.0.0.1) gets 421 and no data,
on every route that holds some; the names the listener really has still work. The browser's
own view is in tests/e2e/test_dns_rebinding.py."""

from __future__ import annotations

import socket
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.harness import ApiClient, DaemonProc, Services, connect, write

SECRET = "rebind-secret-value"  # in an exec check's command: what the attacker is after
FOREIGN = ("evil.example", "evil.example:9780", "127.0.0.1.evil.example", "localhost.evil")
DATA_ROUTES = ("/v1/status", "/v1/workloads", "/v1/events", "/v1/sinks", "/metrics")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="healthd-api-", dir="/tmp") as directory:
        yield Path(directory)


def started(daemon: DaemonProc, services: Services, sock: Path, *extra: str) -> ApiClient:
    web = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=web.port)
    write(daemon, "job", "exec", command=("echo", f"--password={SECRET}"))
    lines = ["api:", f"  socket: {sock}", *extra]
    daemon.daemon_config.write_text("\n".join(lines) + "\n")
    daemon.start()
    client = connect(daemon)
    client.wait_status("web", lambda s: s["healthy"])
    return client


def port_of(client: ApiClient) -> int:
    port = urllib.parse.urlsplit(str(client.where)).port
    assert port is not None
    return port


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_foreign_host_gets_421_and_no_data(
    daemon: DaemonProc, services: Services, sock_dir: Path
) -> None:
    client = started(daemon, services, sock_dir / "api.sock")
    assert SECRET in client.call("GET", "/v1/workloads").text  # what is at stake
    for host in FOREIGN:
        for path in (*DATA_ROUTES, "/v1/status/web", "/v1/events/stream", "/", "/healthz"):
            reply = client.call("GET", path, headers={"Host": host})
            assert reply.status == 421, (host, path, reply.text)
            error = reply.error()
            assert "DNS rebinding" in error["message"]
            assert host.split(":")[0] not in reply.text  # never quoted back
            assert SECRET not in reply.text
            assert "web" not in reply.text
        post = client.call("POST", "/-/reload", headers={"Host": host})
        assert post.status == 421
    (line,) = daemon.events("api_host_refused")  # once a minute, with a count
    assert "host=evil.example" in line


def test_the_listeners_own_names_are_answered(
    daemon: DaemonProc, services: Services, sock_dir: Path
) -> None:
    client = started(
        daemon, services, sock_dir / "api.sock", "  allowed_hosts: [health.internal, 10.9.8.7]"
    )
    port = port_of(client)
    for host in (
        f"127.0.0.1:{port}",
        "127.0.0.1",
        f"127.0.0.2:{port}",  # all of 127/8 is loopback
        f"[::1]:{port}",
        f"localhost:{port}",
        "localhost.",
        f"LOCALHOST.:{port}",
        f"health.internal:{port}",  # api.allowed_hosts
        "Health.Internal.",
        f"10.9.8.7:{port}",
    ):
        reply = client.call("GET", "/v1/status", headers={"Host": host})
        assert reply.status == 200, (host, reply.text)
    assert daemon.events("api_host_refused") == []


def test_no_host_is_served_as_before_and_a_malformed_one_is_400(
    daemon: DaemonProc, services: Services, sock_dir: Path
) -> None:
    port = port_of(started(daemon, services, sock_dir / "api.sock"))
    for version in (b"1.0", b"1.1"):  # no browser leaves Host out: nothing to rebind
        answer = raw(port, b"GET /v1/status HTTP/" + version + b"\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    for host in (b"127.0.0.1, evil.example", b"127.0.0.1:http", b"[::1", b"a b", b""):
        request = b"GET /v1/status HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        answer = raw(port, request)
        assert answer.startswith(b"HTTP/1.1 400 "), (host, answer[:200])
        assert b"Host header is malformed" in answer
    two = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
    assert raw(port, two + b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_the_unix_socket_answers_any_host(
    daemon: DaemonProc, services: Services, sock_dir: Path
) -> None:
    """A browser cannot reach a Unix socket, and its clients name any host they like."""
    sock = sock_dir / "api.sock"
    started(daemon, services, sock)
    reply = ApiClient(sock).call("GET", "/v1/status", headers={"Host": "evil.example"})
    assert reply.status == 200
    assert "web" in reply.text


def test_an_allowed_host_that_is_not_a_host_stops_the_start(daemon: DaemonProc) -> None:
    daemon.daemon_config.write_text("api:\n  allowed_hosts: [http://x.example/]\n")
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == 2
    assert "api.allowed_hosts: 'http://x.example/' is not a host name or address" in daemon.log()
