"""bench.targets and bench.proc against real processes on loopback."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bench.loopback import LOOPBACK, http_get
from bench.nginx import NginxTarget
from bench.proc import cpu_sample, peak_rss_mb, process_tree, read_stat, spawn, stop_group
from bench.targets import BuiltinServer, ServerSentinel


def eventually(probe: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def gone(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is None or stat.state in ("Z", "X")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BuiltinServer]:
    srv = BuiltinServer("test", tmp_path / "server.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def test_builtin_server_counts_requests_and_connections(server: BuiltinServer) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=5)
    try:
        for path in ("/healthz", "/healthz", "/other"):  # one kept-alive connection
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == (200 if path == "/healthz" else 404)
            assert response.read() == (b"ok\n" if path == "/healthz" else b"not found\n")
    finally:
        conn.close()
    assert (server.stats().requests, server.stats().accepted) == (3, 1)

    with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:  # pipelined
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert received.endswith(b"Connection: close\r\n\r\n")  # HEAD: no body
    assert (server.stats().requests, server.stats().accepted) == (5, 2)

    socket.create_connection((LOOPBACK, server.port), timeout=5).close()  # a TCP check
    assert eventually(lambda: (server.stats().requests, server.stats().accepted) == (5, 3))


def test_sentinel_breaks_by_closing_its_port(tmp_path: Path) -> None:
    sentinel = ServerSentinel("http", tmp_path)
    try:
        check = sentinel.start()
        assert check.port is not None
        assert http_get(check.port, "/healthz") == b"ok\n"
        sentinel.break_()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, check.port), timeout=5).close()
    finally:
        sentinel.stop()


@pytest.mark.needs("nginx")
@pytest.mark.parametrize("kind", ["http", "tcp"])
def test_nginx_target_counts_checks_without_its_own_polls(
    require_binary: Callable[[str], str], tmp_path: Path, kind: str
) -> None:
    target = NginxTarget(kind, require_binary("nginx"), tmp_path / "nginx")
    try:
        check = target.start()
        assert check.port is not None
        assert target.counts().checks == 0
        for _ in range(3):
            if kind == "http":
                assert http_get(check.port, "/healthz") == b"ok\n"
            else:
                socket.create_connection((LOOPBACK, check.port), timeout=5).close()
        assert eventually(lambda: target.counts().checks == 3)
        assert target.counts().checks == 3  # polling did not count itself
        master = int((tmp_path / "nginx" / "nginx.pid").read_text())
        workers = process_tree(master)[1:]
        assert workers
    finally:
        target.stop()
    assert gone(master)
    assert all(gone(pid) for pid in workers)


CHILD = """
import subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "30"], start_new_session=True)
end = time.monotonic() + 0.3
while time.monotonic() < end:
    pass
print(grandchild.pid, flush=True)
time.sleep(30)
"""


def test_tree_measures_and_stop_leaves_nothing() -> None:
    proc = spawn([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        assert process_tree(proc.pid) == [proc.pid, grandchild]
        sample = cpu_sample(proc.pid)
        assert sample.own > 0
        assert sample.processes == 2
        assert peak_rss_mb(proc.pid) > 0
    finally:
        # the grandchild leads a session of its own: the group signal misses it, the tree not
        code = stop_group(proc, signal.SIGTERM, grace=5.0)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == -signal.SIGTERM
    assert eventually(lambda: gone(grandchild))
