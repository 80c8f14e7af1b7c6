"""The API's endpoints against the real daemon (``python -m healthd run``) and real services.

Every call goes through the stdlib HTTP client to the daemon's own listener (loopback TCP, or
its Unix socket); what the API says is compared with statuses.json, the log and the services.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    ApiClient,
    DaemonProc,
    Services,
    connect,
    for_workload,
    free_port,
    with_token,
    write,
)

# What GET /v1/status adds to a workload's statuses.json entry (statuses.json leaves "paused"
# out while it is false).
LIVE_FIELDS = {"paused", "monitored", "type", "auto_restart", "restart_budget_left"}
LIVE_FIELDS |= {"next_restart_at"}
# restart policies (issue 7): always shown, even when statuses.json leaves them out
LIVE_FIELDS |= {"flapping", "restart_held", "checks_stopped", "restart_budget_frees_at"}
LIVE_FIELDS |= {"current_restart_delay_seconds"}
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


# -- helpers ---------------------------------------------------------------------------------------


def start_with_token(daemon: DaemonProc, *extra: str) -> ApiClient:
    """Start the daemon with an API token in its config; a client that sends the token.
    ``extra``: more arguments of ``healthd run``."""
    token = with_token(daemon)
    daemon.start(*extra)
    return connect(daemon, token)


# The tests of POST /-/reload and SIGHUP assert what each reload reports: the config dir's
# watcher must not reload first (it is tested in test_reload_watch.py).
NO_WATCH = "--no-watch"


def write_text(daemon: DaemonProc, name: str, text: str) -> Path:
    """A workload file exactly as given (no defaults filled in, maybe broken)."""
    path = daemon.config_dir / f"{name}.yaml"
    path.write_text(text)
    return path


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def names(body: dict[str, Any]) -> list[str]:
    return [entry["workload"] for entry in body["workloads"]]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for a Unix socket (at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="hd-api-") as directory:
        yield Path(directory)


# -- reading -----------------------------------------------------------------------------------


def test_status_lists_every_workload_with_its_saved_and_live_fields(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("http")
    write(
        daemon,
        "web",
        "http",
        host="127.0.0.1",
        port=svc.port,
        auto_restart=True,
        max_restarts=3,
        restart_command=tuple(svc.start_argv()),
    )
    # Broken for good; restarted once ("true" succeeds), then waits an hour for the next try.
    write(
        daemon,
        "down",
        "tcp",
        host="127.0.0.1",
        port=free_port(),
        retries=1,
        auto_restart=True,
        max_restarts=5,
        restart_delay=3600,
        restart_command=("true",),
    )
    write(daemon, "off", "tcp", host="127.0.0.1", port=free_port(), enabled=False)
    daemon.start()
    client = connect(daemon)
    client.wait_status("web", lambda s: s["state"] == "healthy")
    client.wait_status("down", lambda s: s["state"] == "unhealthy" and s["restart_count"] == 1)
    expected = {"web": "healthy", "down": "unhealthy", "off": "disabled"}
    saved = {
        name: daemon.wait_status(name, lambda s: s["state"] == expected[s["workload"]])
        for name in expected
    }

    body = client.get("/v1/status")
    assert set(body) == {"counts", "workloads", "storage", "daemon"}
    about = body["daemon"]
    assert about["host"] == socket.gethostname()
    assert {e["host"] for e in client.get("/v1/events")["events"]} == {about["host"]}
    assert about["status"] == "ok"
    assert about["on_time"] is True
    assert 0 < about["uptime_seconds"] < 60
    assert body["storage"]["ok"] is True  # tests/faults/test_disk_full.py: when it is not
    assert names(body) == ["down", "off", "web"]  # every workload, sorted
    assert body["counts"] == {"healthy": 1, "unhealthy": 1, "disabled": 1}
    entries = {entry["workload"]: entry for entry in body["workloads"]}
    for name, entry in entries.items():
        assert set(entry) - set(saved[name]) == LIVE_FIELDS, name
        assert set(saved[name]) <= set(entry), name
        for key in ("workload", "restart_count", "address", "address_source", "last_restart"):
            assert entry[key] == saved[name][key], (name, key)
        assert entry["total_checks"] >= saved[name]["total_checks"]

    web = entries["web"]
    assert (web["state"], web["healthy"], web["paused"], web["monitored"]) == (
        "healthy",
        True,
        False,
        True,
    )
    assert (web["type"], web["auto_restart"], web["restart_budget_left"]) == ("http", True, 3)
    assert (web["next_restart_at"], web["address"], web["consecutive_fails"]) == (
        None,
        "127.0.0.1",
        0,
    )
    assert web["total_checks"] >= 1
    assert web["last_check"] != GO_ZERO_TIME

    down = entries["down"]
    assert (down["state"], down["healthy"], down["monitored"]) == ("unhealthy", False, True)
    assert (down["restart_count"], down["restart_budget_left"]) == (1, 4)
    assert "connection refused" in down["last_error"]
    next_restart = parse_time(down["next_restart_at"])
    now = datetime.now(UTC)
    assert now + timedelta(minutes=55) < next_restart <= now + timedelta(hours=1)

    off = entries["off"]
    assert (off["state"], off["monitored"], off["healthy"], off["total_checks"]) == (
        "disabled",
        False,
        False,
        0,
    )
    assert (off["type"], off["restart_budget_left"], off["next_restart_at"]) == ("tcp", None, None)


def test_status_of_one_workload_and_404_for_an_unknown_name(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port, interval=3600)
    daemon.start()
    client = connect(daemon)
    one = client.wait_status("db", lambda s: s["total_checks"] == 1)
    assert one["workload"] == "db"
    assert one["state"] == "healthy"
    # an hour until the next check: nothing changes between the two calls
    assert client.get("/v1/status")["workloads"] == [one]

    for name in ("nope", "db2", "no%20pe"):
        reply = client.call("GET", f"/v1/status/{name}")
        assert reply.status == 404, reply.text
        assert reply.headers["content-type"] == "application/json"
        shown = name.replace("%20", " ")
        assert reply.error() == {
            "status": 404,
            "reason": "Not Found",
            "message": f"no workload named {shown!r}",
        }


def test_workloads_lists_effective_configs_and_config_errors_with_file_and_line(
    daemon: DaemonProc,
) -> None:
    write_text(daemon, "plain", "workload: plain\ntype: http\nhost: 127.0.0.1\ninterval: 1h\n")
    write_text(
        daemon,
        "custom",
        "workload: custom\ntype: http\nhost: 127.0.0.1\nport: 18081\ntarget: /ready\n"
        "interval: 1h\ntimeout: 250ms\nretries: 2\n",
    )
    # no host: its address is looked up (machinectl) when it is checked
    write_text(daemon, "probe", "workload: probe\ntype: tcp\nport: 1\n")
    broken = write_text(daemon, "broken", "workload: broken\ntype: tcp\nport: 1\nintreval: 30s\n")
    daemon.start()
    body = connect(daemon).get("/v1/workloads")
    assert set(body) == {"workloads", "config_errors"}
    assert names(body) == ["custom", "plain", "probe"]
    configs = {entry["workload"]: entry for entry in body["workloads"]}

    assert configs["plain"] == {
        "workload": "plain",
        "type": "http",
        "target": "/healthz",  # the http check's defaults, filled in
        "port": 8080,
        "interval": "1h0m0s",
        "timeout": "5s",
        "retries": 3,
        "auto_restart": False,
        "max_restarts": 0,
        "restart_delay": "10s",
        "enabled": True,
        "host": "127.0.0.1",
        "interval_seconds": 3600.0,
        "timeout_seconds": 5.0,
        "restart_delay_seconds": 10.0,
        "checks": "GET http://127.0.0.1:8080/healthz",
    }
    custom = configs["custom"]
    assert (custom["target"], custom["port"], custom["retries"]) == ("/ready", 18081, 2)
    assert (custom["timeout"], custom["timeout_seconds"]) == ("250ms", 0.25)
    assert custom["checks"] == "GET http://127.0.0.1:18081/ready"
    probe = configs["probe"]
    assert (probe["type"], probe["target"], probe["port"], probe["interval_seconds"]) == (
        "tcp",
        "",
        1,
        30.0,
    )
    assert "host" not in probe
    assert probe["checks"] == "tcp (machinectl):1"

    assert body["config_errors"] == [
        {
            "file": str(broken),
            "line": 4,
            "field": "intreval",
            "reason": "unknown key (did you mean 'interval'?)",
            "message": f"{broken}:4: intreval: unknown key (did you mean 'interval'?)",
        }
    ]


def test_workload_whose_file_broke_between_runs_shows_config_error_and_is_not_monitored(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port)
    daemon.start()
    before = daemon.wait_status("db", lambda s: s["state"] == "healthy")
    assert daemon.terminate() == 0
    saved = daemon.status("db")
    assert saved is not None
    broken = write_text(daemon, "db", f"workload: db\ntype: tcp\nport: {svc.port}\nbogus: 1\n")

    daemon.start()
    client = connect(daemon)
    body = client.get("/v1/status")
    assert body["counts"] == {"config_error": 1}
    entry = client.get("/v1/status/db")
    assert (entry["state"], entry["monitored"], entry["healthy"], entry["type"]) == (
        "config_error",
        False,
        False,
        None,
    )
    assert entry["total_checks"] == saved["total_checks"] >= before["total_checks"]
    workloads = client.get("/v1/workloads")
    assert workloads["workloads"] == []
    assert [(e["file"], e["line"]) for e in workloads["config_errors"]] == [(str(broken), 4)]
    assert client.call("GET", "/v1/workloads/db/history").body == {
        "workload": "db",
        "results": [],
    }


def test_reload_reports_a_config_error_workload_whose_file_is_gone_as_removed(
    daemon: DaemonProc,
) -> None:
    write(daemon, "db", "tcp", host="127.0.0.1", port=free_port(), interval=3600)
    daemon.start()
    connect(daemon).wait_status("db", lambda s: s["total_checks"] == 1)
    assert daemon.terminate() == 0
    write_text(daemon, "db", "workload: db\ntype: tcp\nport: 1\nbogus: 1\n")
    client = start_with_token(daemon, NO_WATCH)
    assert client.get("/v1/status/db")["state"] == "config_error"
    (daemon.config_dir / "db.yaml").unlink()
    report = client.post("/-/reload")
    assert client.call("GET", "/v1/status/db").status == 404
    assert report["removed"] == ["db"]


def test_history_is_newest_first_and_respects_limit(daemon: DaemonProc, services: Services) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600, retries=10)
    client = start_with_token(daemon)
    client.wait_status("web", lambda s: s["total_checks"] == 1)  # the first, scheduled check
    for _ in range(2):
        assert client.post("/v1/workloads/web/check")["ok"] is True
    svc.kill()
    failures = [client.post("/v1/workloads/web/check") for _ in range(2)]
    assert [f["ok"] for f in failures] == [False, False]

    body = client.get("/v1/workloads/web/history")
    assert set(body) == {"workload", "results"}
    assert body["workload"] == "web"
    results = body["results"]
    assert [r["ok"] for r in results] == [False, False, True, True, True]  # newest first
    for result in results:
        assert set(result) == {"time", "ok", "duration_seconds", "error"}
        assert result["duration_seconds"] > 0
        assert (result["error"] == "") is result["ok"]
    assert [r["error"] for r in results[:2]] == [f["error"] for f in reversed(failures)]
    assert [r["duration_seconds"] for r in results[:2]] == [
        f["duration_seconds"] for f in reversed(failures)
    ]
    times = [parse_time(r["time"]) for r in results]
    assert times == sorted(times, reverse=True)

    assert client.get("/v1/workloads/web/history?limit=2")["results"] == results[:2]
    assert client.get("/v1/workloads/web/history?limit=1")["results"] == results[:1]
    assert client.get("/v1/workloads/web/history?limit=30")["results"] == results

    for bad in ("0", "abc", "31", "-1", "1.5"):
        reply = client.call("GET", f"/v1/workloads/web/history?limit={bad}")
        assert reply.status == 400, (bad, reply.text)
        assert reply.error()["message"] == f"limit must be a whole number from 1 to 30, not {bad!r}"

    reply = client.call("GET", "/v1/workloads/nope/history")
    assert reply.status == 404, reply.text
    assert reply.error()["message"] == "no workload named 'nope'"


# -- acting: check now -------------------------------------------------------------------------


def test_check_now_returns_a_fresh_result_and_counts_it(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    client = start_with_token(daemon)
    before = client.wait_status("web", lambda s: s["total_checks"] == 1)

    result = client.post("/v1/workloads/web/check")
    assert set(result) == {"workload", "ok", "duration_seconds", "error", "state"}
    assert (result["workload"], result["ok"], result["error"], result["state"]) == (
        "web",
        True,
        "",
        "healthy",
    )
    assert 0 < result["duration_seconds"] < 5
    after = client.get("/v1/status/web")
    assert after["total_checks"] == before["total_checks"] + 1
    assert parse_time(after["last_check"]) > parse_time(before["last_check"])
    assert after["last_check_duration_seconds"] == result["duration_seconds"]

    svc.kill()
    failed = client.post("/v1/workloads/web/check")
    assert failed["ok"] is False
    assert failed["error"] == (
        f"HTTP check failed: http://127.0.0.1:{svc.port}/healthz: connection refused"
    )
    assert failed["state"] == "healthy"  # one failure of three allowed
    status = client.get("/v1/status/web")
    assert (status["total_checks"], status["total_fails"], status["consecutive_fails"]) == (
        before["total_checks"] + 2,
        1,
        1,
    )
    assert status["last_error"] == failed["error"]
    newest = client.get("/v1/workloads/web/history?limit=1")["results"][0]
    assert (newest["ok"], newest["error"]) == (False, failed["error"])


def test_check_now_feeds_the_state_machine(daemon: DaemonProc) -> None:
    write(daemon, "down", "tcp", host="127.0.0.1", port=free_port(), interval=3600, retries=2)
    client = start_with_token(daemon)
    client.wait_status("down", lambda s: s["total_checks"] == 1)
    since = len(daemon.log())
    result = client.post("/v1/workloads/down/check")
    assert (result["ok"], result["state"]) == (False, "unhealthy")
    assert for_workload(daemon.wait_event("unhealthy", since), "down")


def test_check_now_on_a_disabled_workload_is_409_and_on_an_unknown_one_404(
    daemon: DaemonProc,
) -> None:
    write(daemon, "off", "tcp", host="127.0.0.1", port=free_port(), enabled=False)
    client = start_with_token(daemon)
    for action in ("check", "pause", "resume"):
        reply = client.call("POST", f"/v1/workloads/off/{action}")
        assert reply.status == 409, (action, reply.text)
        assert reply.error() == {
            "status": 409,
            "reason": "Conflict",
            "message": "workload 'off' is not monitored now (state disabled)",
        }
        reply = client.call("POST", f"/v1/workloads/nope/{action}")
        assert reply.status == 404, (action, reply.text)
        assert reply.error()["message"] == "no workload named 'nope'"
    assert client.get("/v1/status/off")["total_checks"] == 0


# -- acting: pause and resume ------------------------------------------------------------------


def test_paused_workload_is_checked_but_never_restarted_until_resumed(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("http")
    write(
        daemon,
        "web",
        "http",
        host="127.0.0.1",
        port=svc.port,
        retries=2,
        auto_restart=True,
        restart_command=tuple(svc.start_argv()),
    )
    client = start_with_token(daemon)
    client.wait_status("web", lambda s: s["state"] == "healthy")
    since = len(daemon.log())

    paused = client.post("/v1/workloads/web/pause")
    assert (paused["workload"], paused["state"], paused["paused"]) == ("web", "paused", True)
    assert paused["paused_at"] != GO_ZERO_TIME
    assert "paused_reason" not in paused  # none given
    assert for_workload(daemon.wait_event("workload_paused", since), "web")
    first_pid = svc.pid
    svc.kill()

    status = client.wait_status("web", lambda s: s["consecutive_fails"] >= 6)
    assert (status["state"], status["paused"], status["restart_count"]) == ("paused", True, 0)
    assert "connection refused" in status["last_error"]
    assert len(for_workload(daemon.events("check_fail", since), "web")) >= 6
    assert daemon.events("restart", since) == []
    assert daemon.events("unhealthy", since) == []
    assert not accepts(svc.port)  # nobody started it again
    assert client.get("/v1/status")["counts"] == {"paused": 1}

    resumed_at = len(daemon.log())
    resumed = client.post("/v1/workloads/web/resume")
    assert resumed["paused"] is False
    assert resumed["state"] != "paused"
    assert "paused_at" not in resumed
    status = client.wait_status(
        "web", lambda s: s["state"] == "healthy" and s["restart_count"] == 1
    )
    assert svc.pid != first_pid  # the restart command really ran
    lines = daemon.log()[resumed_at:].splitlines()
    story = [
        lines.index(for_workload(daemon.events(event, resumed_at), "web")[0])
        for event in ("workload_resumed", "unhealthy", "restart", "healthy")
    ]
    assert story == sorted(story), daemon.log()
    assert len(daemon.events("restart", resumed_at)) == 1


def test_pause_survives_a_daemon_restart(daemon: DaemonProc, services: Services) -> None:
    svc = services.start("tcp")
    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port)
    token = with_token(daemon)
    daemon.start()
    client = connect(daemon, token)
    client.wait_status("db", lambda s: s["state"] == "healthy")
    paused = client.post("/v1/workloads/db/pause", {"reason": "maintenance"})
    assert (paused["state"], paused["paused_reason"]) == ("paused", "maintenance")
    assert daemon.terminate() == 0

    saved = daemon.status("db")
    assert saved is not None
    assert (saved["paused"], saved["paused_reason"]) == (True, "maintenance")
    assert saved["paused_at"] == paused["paused_at"]
    assert saved["state"] == "healthy"  # the machine's state; "paused" is shown over it

    daemon.start()
    client = connect(daemon, token)
    again = client.wait_status("db", lambda s: s["total_checks"] > saved["total_checks"])
    assert (again["state"], again["paused"], again["paused_reason"]) == (
        "paused",
        True,
        "maintenance",
    )
    assert again["paused_at"] == paused["paused_at"]
    resumed = client.post("/v1/workloads/db/resume")
    assert resumed["paused"] is False
    client.wait_status("db", lambda s: s["state"] == "healthy")


def test_pause_reason_is_shown_and_resume_clears_it(daemon: DaemonProc) -> None:
    write(daemon, "db", "tcp", host="127.0.0.1", port=free_port())
    client = start_with_token(daemon)
    client.post("/v1/workloads/db/pause", {"reason": "maintenance"})
    status = client.get("/v1/status/db")
    assert (status["state"], status["paused"], status["paused_reason"]) == (
        "paused",
        True,
        "maintenance",
    )
    first_paused_at = status["paused_at"]
    again = client.post("/v1/workloads/db/pause", {"reason": "disk swap"})
    assert (again["paused_reason"], again["paused_at"]) == ("disk swap", first_paused_at)
    resumed = client.post("/v1/workloads/db/resume")
    assert resumed["paused"] is False
    assert "paused_reason" not in resumed
    assert "paused_reason" not in client.get("/v1/status/db")


def test_pause_and_resume_refuse_bad_bodies(daemon: DaemonProc) -> None:
    write(daemon, "db", "tcp", host="127.0.0.1", port=free_port())
    client = start_with_token(daemon)
    cases: list[tuple[str, bytes, str]] = [
        ("pause", b'{"reason": "maint', "the request body is not valid JSON: "),
        ("pause", b'{"reason": "x", "until": "tomorrow"}', "unknown field(s) until (known: "),
        ("pause", b'{"reason": 5}', "reason must be a string of at most 500 characters"),
        ("pause", b'["maintenance"]', "the request body must be a JSON object"),
        ("pause", b'{"reason": "' + b"x" * 501 + b'"}', "reason must be a string of at most"),
        ("resume", b'{"reason": "x"}', "unknown field(s) reason (known: none)"),
        ("check", b"{", "the request body is not valid JSON: "),
    ]
    for action, raw, message in cases:
        reply = client.call("POST", f"/v1/workloads/db/{action}", raw=raw)
        assert reply.status == 400, (action, raw, reply.text)
        assert reply.error()["message"].startswith(message), (action, raw, reply.text)
    status = client.get("/v1/status/db")
    assert status["paused"] is False  # nothing refused changed anything
    assert status["state"] != "paused"
    # an empty body is no body: accepted
    assert client.call("POST", "/v1/workloads/db/pause", raw=b"").status == 200


def test_posts_need_the_token(daemon: DaemonProc) -> None:
    write(daemon, "db", "tcp", host="127.0.0.1", port=free_port())
    token = with_token(daemon)
    daemon.start()
    url = connect(daemon, token).where
    for client in (ApiClient(url), ApiClient(url, "wrong-" + token)):
        reply = client.call("POST", "/v1/workloads/db/pause")
        assert reply.status == 401, reply.text
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/v1/status/db")["paused"] is False  # reading needs no token


def test_root_on_the_unix_socket_may_post_without_a_token(
    daemon: DaemonProc, short_dir: Path
) -> None:
    sock = short_dir / "healthd.sock"
    daemon.daemon_config.write_text(f"api:\n  socket: {sock}\n")
    write(daemon, "db", "tcp", host="127.0.0.1", port=free_port())
    daemon.start()
    tcp = connect(daemon)
    assert daemon.api_endpoints() == {
        "listen": str(tcp.where).removeprefix("http://"),
        "socket": str(sock),
    }
    if os.geteuid() != 0:
        pytest.skip("runs as root: root on the socket needs no token")
    unix = ApiClient(sock)
    paused = unix.post("/v1/workloads/db/pause", {"reason": "over the socket"})
    assert (paused["state"], paused["paused_reason"]) == ("paused", "over the socket")
    assert tcp.get("/v1/status/db")["paused_reason"] == "over the socket"
    # no token configured: nobody may change anything over TCP
    reply = tcp.call("POST", "/v1/workloads/db/resume")
    assert reply.status == 403, reply.text
    assert unix.post("/v1/workloads/db/resume")["paused"] is False


# -- acting: reload ----------------------------------------------------------------------------


def test_reload_adds_changes_keeps_broken_and_removes(
    daemon: DaemonProc, services: Services
) -> None:
    svc_a, svc_b, svc_c = (services.start("tcp") for _ in range(3))
    write(daemon, "a", "tcp", host="127.0.0.1", port=svc_a.port)
    write(daemon, "b", "tcp", host="127.0.0.1", port=svc_b.port)
    client = start_with_token(daemon, NO_WATCH)
    for name in ("a", "b"):
        client.wait_status(name, lambda s: s["state"] == "healthy")

    write(daemon, "c", "tcp", host="127.0.0.1", port=svc_c.port)  # added
    write(daemon, "a", "tcp", host="127.0.0.1", port=svc_c.port, interval=0.3)  # changed
    broken = write_text(  # broken: keeps running on the config it had
        daemon,
        "b",
        f"workload: b\ntype: tcp\nhost: 127.0.0.1\nport: {svc_b.port}\ncolour: red\n",
    )
    since = len(daemon.log())
    report = client.post("/-/reload")
    errors = report.pop("config_errors")
    assert report == {
        "ok": False,
        "added": ["c"],
        "removed": [],
        "changed": ["a"],
        "kept": ["b"],
        "unchanged": 0,
    }
    assert [(e["file"], e["line"], e["field"]) for e in errors] == [(str(broken), 5, "colour")]
    assert errors[0]["reason"].startswith("unknown key")
    assert daemon.events("config_reloaded", since)

    workloads = client.get("/v1/workloads")
    configs = {entry["workload"]: entry for entry in workloads["workloads"]}
    assert sorted(configs) == ["a", "b", "c"]
    assert (configs["a"]["port"], configs["a"]["interval_seconds"]) == (svc_c.port, 0.3)
    assert configs["b"]["port"] == svc_b.port
    assert [e["file"] for e in workloads["config_errors"]] == [str(broken)]

    # b: still checked on its old config; c: checked; a: checks its new port
    b_before = client.get("/v1/status/b")["total_checks"]
    client.wait_status("b", lambda s: s["total_checks"] >= b_before + 3 and s["healthy"])
    assert client.get("/v1/status/b")["state"] == "healthy"
    client.wait_status("c", lambda s: s["state"] == "healthy")
    svc_a.kill()
    a_before = client.get("/v1/status/a")["total_checks"]
    a_after = client.wait_status("a", lambda s: s["total_checks"] >= a_before + 3)
    assert (a_after["state"], a_after["total_fails"]) == ("healthy", 0)

    (daemon.config_dir / "c.yaml").unlink()
    report = client.post("/-/reload")
    assert (report["added"], report["removed"], report["changed"]) == ([], ["c"], [])
    assert (report["kept"], report["unchanged"], report["ok"]) == (["b"], 1, False)
    assert names(client.get("/v1/status")) == ["a", "b"]
    assert client.call("GET", "/v1/status/c").status == 404
    assert client.call("GET", "/v1/workloads/c/history").status == 404


def test_reload_with_nothing_changed_reports_everything_unchanged(daemon: DaemonProc) -> None:
    write(daemon, "a", "tcp", host="127.0.0.1", port=free_port())
    write(daemon, "b", "tcp", host="127.0.0.1", port=free_port())
    client = start_with_token(daemon)
    assert client.post("/-/reload") == {
        "ok": True,
        "added": [],
        "removed": [],
        "changed": [],
        "kept": [],
        "unchanged": 2,
        "config_errors": [],
    }


def test_reload_with_the_config_dir_gone_keeps_everything_running(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    write(daemon, "a", "tcp", host="127.0.0.1", port=svc.port)
    write(daemon, "b", "tcp", host="127.0.0.1", port=svc.port)
    client = start_with_token(daemon)
    client.wait_status("b", lambda s: s["state"] == "healthy")
    daemon.config_dir.rename(daemon.config_dir.with_name("moved"))

    report = client.post("/-/reload")
    assert (report["ok"], report["kept"], report["removed"]) == (False, ["a", "b"], [])
    assert [(e["file"], e["reason"]) for e in report["config_errors"]] == [
        (str(daemon.config_dir), "config directory does not exist")
    ]
    assert names(client.get("/v1/workloads")) == ["a", "b"]
    checks = client.get("/v1/status/a")["total_checks"]
    client.wait_status("a", lambda s: s["total_checks"] >= checks + 2 and s["healthy"])


def test_pause_survives_a_reload_that_changes_the_workload(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port)
    client = start_with_token(daemon, NO_WATCH)
    client.wait_status("db", lambda s: s["state"] == "healthy")
    client.post("/v1/workloads/db/pause", {"reason": "maintenance"})
    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port, interval=0.3)
    assert client.post("/-/reload")["changed"] == ["db"]
    status = client.get("/v1/status/db")
    assert (status["state"], status["paused"], status["paused_reason"]) == (
        "paused",
        True,
        "maintenance",
    )
    assert client.get("/v1/workloads")["workloads"][0]["interval_seconds"] == 0.3
    checks = status["total_checks"]
    client.wait_status("db", lambda s: s["total_checks"] >= checks + 2 and s["paused"])


def test_reload_disables_and_enables_a_workload(daemon: DaemonProc, services: Services) -> None:
    svc = services.start("tcp")
    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port)
    client = start_with_token(daemon, NO_WATCH)
    client.wait_status("db", lambda s: s["state"] == "healthy")

    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port, enabled=False)
    assert client.post("/-/reload")["changed"] == ["db"]
    off = client.get("/v1/status/db")
    assert (off["state"], off["monitored"]) == ("disabled", False)
    assert client.call("POST", "/v1/workloads/db/check").status == 409
    time.sleep(0.6)  # three intervals: nothing checks it any more
    assert client.get("/v1/status/db")["total_checks"] == off["total_checks"]

    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port)
    assert client.post("/-/reload")["changed"] == ["db"]
    client.wait_status(
        "db",
        lambda s: (
            s["monitored"] and s["state"] == "healthy" and s["total_checks"] > off["total_checks"]
        ),
    )
    assert client.post("/v1/workloads/db/check")["ok"] is True


def test_sighup_reloads_the_config_dir(daemon: DaemonProc, services: Services) -> None:
    svc = services.start("tcp")
    write(daemon, "a", "tcp", host="127.0.0.1", port=svc.port)
    daemon.start(NO_WATCH)
    client = connect(daemon)
    client.wait_status("a", lambda s: s["state"] == "healthy")
    write(daemon, "late", "tcp", host="127.0.0.1", port=svc.port)
    since = len(daemon.log())
    os.kill(daemon.pid, signal.SIGHUP)
    line = daemon.wait_event("config_reloaded", since)[0]
    assert "added=1" in line.split()
    signalled = [line for line in daemon.events("signal", since) if "signal=SIGHUP" in line]
    assert signalled
    client.wait_status("late", lambda s: s["state"] == "healthy" and s["total_checks"] >= 1)
    assert names(client.get("/v1/status")) == ["a", "late"]
    assert daemon.proc is not None
    assert daemon.proc.poll() is None  # reloaded, not stopped


# -- the daemon's own health, and routing ------------------------------------------------------


def test_healthz_is_200_ok_while_running(daemon: DaemonProc) -> None:
    write(daemon, "a", "tcp", host="127.0.0.1", port=free_port())
    write(daemon, "off", "tcp", host="127.0.0.1", port=free_port(), enabled=False)
    daemon.start()
    client = connect(daemon)
    client.wait_status("a", lambda s: s["total_checks"] >= 2)
    reply = client.call("GET", "/healthz")
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.body
    assert (body["status"], body["workloads"], body["monitored"]) == ("ok", 2, 1)
    assert body["checks_total"] >= 2
    assert body["scheduler"]["behind"] is False
    assert parse_time(body["started_at"]) <= datetime.now(UTC)


def test_wrong_method_is_405_with_allow_and_unknown_path_404(daemon: DaemonProc) -> None:
    write(daemon, "a", "tcp", host="127.0.0.1", port=free_port())
    daemon.start()
    client = connect(daemon)  # no token: the method is refused before anyone is asked for one
    for method, path, allow in [
        ("POST", "/v1/status", "GET, HEAD"),
        ("DELETE", "/v1/status/a", "GET, HEAD"),
        ("PUT", "/v1/workloads", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("GET", "/v1/workloads/a/check", "POST"),
        ("GET", "/v1/workloads/a/pause", "POST"),
        ("DELETE", "/-/reload", "POST"),
    ]:
        reply = client.call(method, path)
        assert reply.status == 405, (method, path, reply.text)
        assert reply.headers["allow"] == allow, (method, path)
        assert reply.error()["reason"] == "Method Not Allowed"
        assert reply.error()["message"].startswith(f"{method} is not allowed here; use ")

    for path in ("/nope", "/v1/status/a/extra", "/v1/workloads/", "/v2/status"):
        reply = client.call("GET", path)
        assert reply.status == 404, (path, reply.text)
        assert reply.headers["content-type"] == "application/json"
        assert reply.error()["message"] == (f"no such endpoint {path!r}; see GET /v1/openapi.json")
