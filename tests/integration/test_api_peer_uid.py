"""The uid of a loopback TCP client, as the kernel says it (``peer_uid.py``), on real sockets:
clients run as uid 65534 through setpriv, from 127.0.0.0/8 and ::1."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from healthd.api.http import HttpServer
from healthd.api.messages import Request, Response, json_response
from healthd.api.peer_uid import loopback_peer_uid
from healthd.logs import make_logger

NOBODY = 65534
# Run as another uid: connect to argv's (host, port) from argv's source, say so, hold on
# until stdin closes (10 s at most).
CLIENT = r"""
import select, socket, sys
host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family)
sock.bind((source, 0))
sock.connect((host, port))
print("connected", flush=True)
select.select([sys.stdin], [], [], 10)
"""


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the security suite runs as root (CI runs as root)")
        pytest.skip("needs root: the clients run as another uid")


@contextmanager
def client_as(
    setpriv: str, uid: int, server: socket.socket, source: str
) -> Iterator[subprocess.Popen[str]]:
    host, port = server.getsockname()[:2]
    argv = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python(setpriv)]
    argv += ["-c", CLIENT, host, str(port), source]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "connected\n"
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def python(setpriv: str) -> str:
    """A Python that uid 65534 may run (the test's may live in root's home)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        probe = [setpriv, f"--reuid={NOBODY}", "--clear-groups", candidate, "-c", "pass"]
        if subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0:
            return candidate
    pytest.fail("no Python that uid 65534 can run")


def accepted(server: socket.socket) -> tuple[tuple[str, int], tuple[str, int], socket.socket]:
    """(our address, the peer's, the connection) of the next client."""
    server.settimeout(10)
    conn, peer = server.accept()
    return conn.getsockname()[:2], peer[:2], conn


@pytest.mark.needs("setpriv")
@pytest.mark.parametrize(("listen", "source"), [("127.0.0.1", "127.0.0.5"), ("::1", "::1")])
def test_the_kernel_names_the_uid_of_a_loopback_client(
    require_binary: Callable[[str], str], listen: str, source: str
) -> None:
    setpriv = require_binary("setpriv")
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.create_server((listen, 0), family=family) as server:
        with client_as(setpriv, NOBODY, server, source):
            ours, theirs, conn = accepted(server)
            with conn:
                assert theirs[0] == source
                assert loopback_peer_uid(ours, theirs) == NOBODY
        mine = socket.create_connection(server.getsockname()[:2], timeout=10)
        with mine:
            ours, theirs, conn = accepted(server)
            with conn:
                assert loopback_peer_uid(ours, theirs) == os.geteuid()


def test_a_dual_stack_listener_names_an_ipv4_client() -> None:
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            ours, theirs, conn = accepted(server)
            with conn:
                assert theirs[0] == "::ffff:127.0.0.1"
                assert loopback_peer_uid(ours, theirs) == os.geteuid()


@pytest.mark.needs("setpriv")
def test_a_client_that_has_closed_its_socket_is_no_one_not_root(
    require_binary: Callable[[str], str],
) -> None:
    """The kernel answers uid 0 for a socket no process holds (FIN-WAIT, TIME-WAIT): that is
    not root, and must not get root's places."""
    setpriv = require_binary("setpriv")
    with socket.create_server(("127.0.0.1", 0)) as server:
        with client_as(setpriv, NOBODY, server, "127.0.0.6") as proc:
            ours, theirs, conn = accepted(server)
            assert loopback_peer_uid(ours, theirs) == NOBODY
        proc.wait(timeout=10)
        with conn:
            conn.settimeout(10)
            assert conn.recv(1) == b""  # its FIN: the client's socket is closed
            # Orphaned, then (within moments) a FIN-WAIT-2 mini-socket that says uid 0
            for _ in range(10):
                assert loopback_peer_uid(ours, theirs) is None
                time.sleep(0.05)


def test_a_peer_that_is_not_on_loopback_has_no_uid() -> None:
    assert loopback_peer_uid(("10.0.0.1", 9780), ("10.0.0.2", 40000)) is None
    assert loopback_peer_uid(("127.0.0.1", 9780), ("192.0.2.1", 40000)) is None
    assert loopback_peer_uid(("127.0.0.1", 9780), ("not an address", 1)) is None
    # no such connection
    assert loopback_peer_uid(("127.0.0.1", 1), ("127.0.0.1", 2)) is None


async def test_the_api_knows_a_loopback_tcp_peer_by_its_uid() -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return json_response(200, {})

    server = HttpServer(handler, log=make_logger(stream=io.StringIO()))
    _, port = await server.listen_tcp("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /who HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            await reader.read()
        writer.close()
    finally:
        await server.close()
    peer = seen[0].peer
    assert (peer.unix, peer.host, peer.uid, peer.uid_source) == (
        False,
        "127.0.0.1",
        os.geteuid(),
        "sock_diag",
    )
