"""A server whose accept path died while the connections it holds go on answering.

As it was found: an HTTP/1.1 server that serves keep-alive connections closes its listening
socket (what a server looks like once it is out of file descriptors, or when its acceptor
thread has died). Every new client is refused; the connections it accepted before still get
200. By default a check opens a new connection, so it sees what a new client sees; with
``keep_alive: true`` it keeps asking on its old connection, which is the blind spot that
docs/CHECKS.md documents.
"""

from __future__ import annotations

import socket
import time

from integration.harness import DaemonProc, write

from .targets import Conn, checks_done, hostile, start_with_canary

INTERVAL = 0.2
RETRIES = 2
TIMEOUT = 1.0


def keep_alive_server(conn: Conn) -> None:
    """HTTP/1.1 as servers speak it: answer every request on the connection, until the
    client asks to close or goes away."""
    while True:
        head = conn.read_request()
        if not head:
            return
        conn.request = b""
        asked_to_close = b"\r\nconnection: close\r\n" in head.lower()
        closing = b"Connection: close\r\n" if asked_to_close else b""
        if not conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + closing + b"\r\nok"):
            return
        if asked_to_close:
            return


def refused(host: str, port: int) -> bool:
    """Whether a new client of ``host:port`` is refused."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_dead_accept_path_makes_the_workload_unhealthy(daemon: DaemonProc) -> None:
    with hostile(keep_alive_server) as srv:
        write(daemon, "web", "http", host=srv.host, port=srv.port, interval=INTERVAL,
              retries=RETRIES, timeout=TIMEOUT)  # fmt: skip
        client = start_with_canary(daemon)
        client.wait_status("web", lambda s: s["state"] == "healthy" and s["total_checks"] >= 3)

        srv.close_listener()
        closed_at = time.monotonic()
        assert refused(srv.host, srv.port)
        status = client.wait_status("web", lambda s: s["state"] == "unhealthy", timeout=10)
        took = time.monotonic() - closed_at
    # the bound the issue names, plus the API poll's own granularity
    assert took < INTERVAL * RETRIES + TIMEOUT + 0.5, took
    assert status["last_error"] == (
        f"HTTP check failed: http://{srv.host}:{srv.port}/healthz: connection refused"
    )
    # each check had a connection of its own, and asked the server to close it
    assert len(srv.conns) >= 3
    assert all(b"\r\nConnection: close\r\n" in c.request for c in srv.conns if c.request)
    assert daemon.terminate() == 0


def test_with_keep_alive_the_dead_accept_path_is_not_seen(daemon: DaemonProc) -> None:
    """The blind spot docs/CHECKS.md documents for keep_alive: true, shown to exist."""
    with hostile(keep_alive_server) as srv:
        write(daemon, "web", "http", host=srv.host, port=srv.port, interval=INTERVAL,
              retries=RETRIES, timeout=TIMEOUT, keep_alive=True)  # fmt: skip
        client = start_with_canary(daemon)
        client.wait_status("web", lambda s: s["state"] == "healthy" and s["total_checks"] >= 3)

        srv.close_listener()
        closed_at = time.monotonic()
        assert refused(srv.host, srv.port)
        done = checks_done(client, "web")
        # well past the time the default would have needed to see it
        status = client.wait_status("web", lambda s: s["total_checks"] >= done + 10, timeout=20)
        assert time.monotonic() - closed_at > INTERVAL * RETRIES + TIMEOUT
        assert refused(srv.host, srv.port)  # still refusing every new client
    assert status["state"] == "healthy", status
    assert status["total_fails"] == 0, status
    assert len(srv.conns) == 1  # every check on the one kept connection
    assert daemon.terminate() == 0
