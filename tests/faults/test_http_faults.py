"""HTTP targets that misbehave, checked by the real daemon on loopback.

Each test runs ``python -m healthd run`` against a hostile server of its own (tests/faults/
targets.py) next to a healthy workload, and asserts the verdict, its error text, how long the
check took, that the healthy workload went on being checked, and that nothing piled up.
"""

from __future__ import annotations

import time

import pytest

from integration.harness import DaemonProc, free_port, wait_for, write

from .targets import (
    Conn,
    canary_keeps_going,
    checks_done,
    fd_count,
    history,
    hostile,
    loopback_host,
    rss_kib,
    start_with_canary,
)

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"


def url(host: str, port: int) -> str:
    return f"http://{host}:{port}/healthz"


def test_target_that_accepts_and_never_answers_fails_at_its_timeout(daemon: DaemonProc) -> None:
    def silent(conn: Conn) -> None:
        conn.read_request()
        while conn.wait(0.02) and not conn.peer_closed():
            pass

    with hostile(silent) as srv:
        write(daemon, "web", "http", host=srv.host, port=srv.port, timeout=0.5, retries=2)
        client = start_with_canary(daemon)
        status = client.wait_status("web", lambda s: s["state"] == "unhealthy")
        assert status["last_error"] == f"timed out after 500ms: GET {url(srv.host, srv.port)}"
        assert daemon.status_dir.joinpath("statuses.json").exists()
        canary_keeps_going(client)

        # Every check ends at its deadline, not later, and closes its connection there.
        fds = fd_count(daemon.pid)
        done = checks_done(client, "web")
        client.wait_status("web", lambda s: s["total_checks"] >= done + 8, timeout=20)
        failed = [r for r in history(client, "web") if not r["ok"]]
        assert len(failed) >= 8
        for result in failed:
            assert 0.5 <= result["duration_seconds"] < 0.8, result
        assert fd_count(daemon.pid) <= fds + 2  # one socket per check would be +8
        open_conns = [c for c in srv.conns if c.peer_gone_at is None]
        assert len(open_conns) <= 1, "connections of timed-out checks were left open"
        for conn in srv.conns:
            if conn.peer_gone_at is not None:
                assert conn.peer_gone_at - conn.accepted_at < 0.9
    saved = daemon.status("web")
    assert saved is not None
    assert saved["state"] == "unhealthy"
    assert saved["last_error"].startswith("timed out after 500ms: GET ")
    for_web = [line for line in daemon.events("unhealthy") if "workload=web" in line.split()]
    assert for_web, daemon.log()
    assert daemon.terminate() == 0


def test_headers_trickled_a_byte_a_second_fail_at_the_deadline_not_later(
    daemon: DaemonProc,
) -> None:
    """A byte every second keeps the connection busy: only a deadline for the whole check
    (not one for idleness, which each byte would reset) ends it at its timeout."""

    def trickle(conn: Conn) -> None:
        conn.read_request()
        for byte in OK_HEAD + b"Content-Length: 2\r\n\r\nok":
            if not conn.send(bytes([byte])):
                return
            for _ in range(50):  # a second, watching for the hang-up meanwhile
                if not conn.wait(0.02) or conn.peer_closed():
                    return

    with hostile(trickle) as srv:
        write(daemon, "slow", "http", host=srv.host, port=srv.port, timeout=1.5, retries=1)
        client = start_with_canary(daemon)
        status = client.wait_status("slow", lambda s: s["state"] == "unhealthy")
        assert status["last_error"] == f"timed out after 1.5s: GET {url(srv.host, srv.port)}"
        assert 1.5 <= status["last_check_duration_seconds"] < 1.9, status
        canary_keeps_going(client)
        first = srv.conns[0]
        wait_for("the server to see the check hang up", lambda: first.peer_gone_at is not None)
        assert first.peer_gone_at is not None
        # hung up at ~1.5s: a deadline for idleness would have been reset at 1s, to 2.5s
        assert first.peer_gone_at - first.accepted_at < 2.2
        assert 2 <= first.sent <= 3  # the bytes of 0s and 1s (and maybe 2s): far from all
    assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("head", "endless", "healthy"),
    [
        (OK_HEAD + b"Content-Length: %d\r\n\r\n" % (1 << 30), b"x" * 65536, True),
        (
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"10000\r\n" + b"x" * 65536 + b"\r\n",
            False,
        ),
    ],
    ids=["200-content-length", "503-chunked"],
)
def test_a_1_gib_body_is_not_read_and_the_status_decides(
    daemon: DaemonProc, head: bytes, endless: bytes, healthy: bool
) -> None:
    def huge(conn: Conn) -> None:
        conn.read_request()
        conn.send(head)
        while conn.sent < (1 << 30) and conn.send(endless):
            pass

    with hostile(huge) as srv:
        write(daemon, "big", "http", host=srv.host, port=srv.port, timeout=2.0, retries=1)
        client = start_with_canary(daemon)
        want = "healthy" if healthy else "unhealthy"
        client.wait_status("big", lambda s: s["state"] == want and s["total_checks"] >= 3)
        rss = rss_kib(daemon.pid)
        done = checks_done(client, "big")
        client.wait_status("big", lambda s: s["total_checks"] >= done + 10, timeout=20)
        canary_keeps_going(client)
        grown = rss_kib(daemon.pid) - rss
        results = history(client, "big")
        status = client.get("/v1/status/big")
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 10 checks of a 1 GiB body"
    assert all(r["ok"] is healthy for r in results), results
    assert all(r["duration_seconds"] < 0.5 for r in results), results
    # Each check read at most what sat in the socket buffers when it hung up.
    assert max(c.sent for c in srv.conns) < 64 << 20, [c.sent for c in srv.conns]
    if not healthy:
        prefix = f"HTTP 503 from {url(srv.host, srv.port)}: "
        assert status["last_error"].startswith(prefix), status
        assert len(status["last_error"]) <= len(prefix) + 200  # a snippet of the body
    assert daemon.terminate() == 0


def test_a_100_kib_header_line_fails_without_being_read_whole(daemon: DaemonProc) -> None:
    def long_header(conn: Conn) -> None:
        conn.read_request()
        conn.send(OK_HEAD + b"X-Padding: " + b"a" * 100 * 1024 + b"\r\nContent-Length: 0\r\n\r\n")

    with hostile(long_header) as srv:
        write(daemon, "fat", "http", host=srv.host, port=srv.port, timeout=2.0, retries=1)
        client = start_with_canary(daemon)
        status = client.wait_status("fat", lambda s: s["state"] == "unhealthy")
        canary_keeps_going(client)
    assert status["last_error"] == (
        f"HTTP check failed: {url(srv.host, srv.port)}: response headers larger than 64 KiB"
    )
    assert status["last_check_duration_seconds"] < 0.5
    assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("sent", "verdict"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Ty", "connection lost: connection reset by peer"),
        (OK_HEAD + b"Content-Length: 1000\r\n\r\npartial", ""),
    ],
    ids=["in-the-headers", "in-the-body"],
)
def test_connection_reset_mid_response(daemon: DaemonProc, sent: bytes, verdict: str) -> None:
    """Reset before the headers are complete: a failure naming the reset. Reset in the body:
    the status already answered, and it decides (the reference never reads the body)."""

    def reset(conn: Conn) -> None:
        conn.read_request()
        conn.send(sent)
        time.sleep(0.05)  # let the bytes arrive on their own, then abort
        conn.reset()

    with hostile(reset) as srv:
        write(daemon, "rst", "http", host=srv.host, port=srv.port, timeout=2.0, retries=1)
        client = start_with_canary(daemon)
        client.wait_status("rst", lambda s: s["total_checks"] >= 5)
        canary_keeps_going(client)
        results = history(client, "rst")
    expected = f"HTTP check failed: {url(srv.host, srv.port)}: {verdict}" if verdict else ""
    assert {r["error"] for r in results} == {expected}, results
    assert all(r["ok"] == (verdict == "") for r in results)
    assert all(r["duration_seconds"] < 0.5 for r in results), results
    assert daemon.terminate() == 0


def test_connection_refused_fails_at_once(daemon: DaemonProc) -> None:
    host = loopback_host()
    port = free_port(host)  # bound then released: nothing listens there
    write(daemon, "gone", "http", host=host, port=port, timeout=2.0, retries=2)
    client = start_with_canary(daemon)
    status = client.wait_status("gone", lambda s: s["state"] == "unhealthy")
    canary_keeps_going(client)
    assert status["last_error"] == f"HTTP check failed: {url(host, port)}: connection refused"
    assert status["last_check_duration_seconds"] < 0.5
    assert status["consecutive_fails"] >= 2
    assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("status_line", "error"),
    [
        (b"HTTP/1.1 200 OK", ""),
        (b"HTTP/1.1 503 Service Unavailable", "HTTP 503 from {url}: starting"),
    ],
    ids=["200", "503"],
)
def test_body_that_stalls_after_the_headers_is_judged_by_the_status_at_the_deadline(
    daemon: DaemonProc, status_line: bytes, error: str
) -> None:
    def stall(conn: Conn) -> None:
        conn.read_request()
        conn.send(status_line + b"\r\nContent-Length: 100\r\n\r\nstarting")
        while conn.wait(0.02) and not conn.peer_closed():
            pass

    with hostile(stall) as srv:
        write(daemon, "stall", "http", host=srv.host, port=srv.port, timeout=0.5, retries=1)
        client = start_with_canary(daemon)
        client.wait_status("stall", lambda s: s["total_checks"] >= 3)
        canary_keeps_going(client)
        results = history(client, "stall")
        assert len([c for c in srv.conns if c.peer_gone_at is None]) <= 1  # hung up each time
    expected = error.format(url=url(srv.host, srv.port))
    assert {r["error"] for r in results} == {expected}, results
    assert all(r["ok"] == (error == "") for r in results)
    for result in results:
        assert 0.5 <= result["duration_seconds"] < 0.8, result  # at the deadline, not later
    assert daemon.terminate() == 0
