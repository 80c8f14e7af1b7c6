"""What the real daemon reports, and does, for HTTP servers that each do one odd thing.

An interim ``103 Early Hints`` before the answer was an ``unhealthy: HTTP 103`` that, with
``auto_restart``, would restart a healthy service; a body that ends before its Content-Length
was judged as if whole. Both are served here by a hostile loopback server
(tests/faults/targets.py) to ``python -m healthd run``.
"""

from __future__ import annotations

import json

from integration.harness import DaemonProc, for_workload, write

from .targets import Conn, canary_keeps_going, checks_done, history, hostile, start_with_canary


def early_hints(conn: Conn) -> None:
    conn.read_request()
    conn.send(
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload; as=style\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )


def test_early_hints_before_the_answer_is_healthy_and_never_restarted(
    daemon: DaemonProc,
) -> None:
    restarted = daemon.config_dir.parent / "restarted"
    with hostile(early_hints) as srv:
        write(daemon, "web", "http", host=srv.host, port=srv.port, retries=1,
              auto_restart=True, restart_command=("touch", str(restarted)))  # fmt: skip
        client = start_with_canary(daemon)
        status = client.wait_status("web", lambda s: s["total_checks"] >= 10)
        canary_keeps_going(client)
    assert status["state"] == "healthy", status
    assert status["total_fails"] == 0, status
    assert status["restart_count"] == 0
    assert not restarted.exists()
    # (the canary's very first check may come before the API listens: only web's count)
    assert for_workload(daemon.events("check_fail"), "web") == []
    assert daemon.terminate() == 0


def truncated(conn: Conn) -> None:
    conn.read_request()
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstatus: ok\r\n")  # 12 of 100


def test_a_truncated_body_is_carried_in_the_status_when_the_status_decides(
    daemon: DaemonProc,
) -> None:
    with hostile(truncated) as srv:
        write(daemon, "plain", "http", host=srv.host, port=srv.port)
        write(daemon, "matched", "http", host=srv.host, port=srv.port, body_contains="ok")
        client = start_with_canary(daemon)
        plain = client.wait_status("plain", lambda s: s["total_checks"] >= 3)
        matched = client.wait_status("matched", lambda s: s["state"] == "unhealthy")
        results = history(client, "plain")
        done = checks_done(client, "plain")
        client.wait_status("plain", lambda s: s["total_checks"] >= done + 2)  # saved since
    note = "body truncated: 12 of 100 bytes"
    assert plain["state"] == "healthy", plain
    assert plain["last_check_note"] == note
    assert all(r["ok"] and r["note"] == note and r["error"] == "" for r in results), results
    url = f"http://{srv.host}:{srv.port}/healthz"
    assert matched["last_error"] == f"HTTP 200 from {url}: body truncated: {note[16:]}"
    assert "last_check_note" not in matched
    assert daemon.terminate() == 0
    saved = json.loads(daemon.status_dir.joinpath("statuses.json").read_text())
    by_name = {entry["workload"]: entry for entry in saved}
    assert by_name["plain"]["last_check_note"] == note
