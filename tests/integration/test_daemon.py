"""The real daemon (``python -m healthd run``) against real local services and commands."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .harness import DaemonProc, Services, for_workload, free_port, run_cli, write


def test_killed_service_is_restarted_and_proven_healthy(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("http")
    write(
        daemon,
        "web",
        "http",
        port=svc.port,
        host="127.0.0.1",
        retries=2,
        auto_restart=True,
        restart_command=tuple(svc.start_argv()),
    )
    daemon.start()
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    first_pid = svc.pid
    svc.kill()  # a real crash: kill -9 of its process group

    status = daemon.wait_status(
        "web", lambda s: s["state"] == "healthy" and s["restart_count"] == 1, timeout=30
    )
    assert svc.pid != first_pid  # the restart command really started a new one
    assert status["healthy"] is True
    assert status["restart_failures"] == 0
    lines = daemon.log().splitlines()
    story = [
        lines.index(for_workload(daemon.events(event), "web")[0])
        for event in ("unhealthy", "restart", "healthy")
    ]
    assert story == sorted(story), daemon.log()  # in that order
    assert daemon.terminate() == 0


def test_restart_budget_survives_a_daemon_restart(daemon: DaemonProc) -> None:
    port = free_port()  # nothing listens: the service stays broken whatever the restart does
    write(
        daemon,
        "broken",
        "tcp",
        port=port,
        host="127.0.0.1",
        retries=1,
        auto_restart=True,
        max_restarts=1,
        restart_command=("true",),
    )
    daemon.start()
    first = daemon.wait_status(
        "broken", lambda s: s["state"] == "gave_up" and s["restart_count"] == 1
    )
    daemon.wait_event("restart_exhausted")
    assert len(daemon.events("restart")) == 1
    assert daemon.terminate() == 0

    since = len(daemon.log())
    daemon.start()
    daemon.wait_event("daemon_started", since)
    status = daemon.wait_status(
        "broken",
        lambda s: s["total_checks"] >= first["total_checks"] + 3 and s["state"] == "gave_up",
    )
    assert status["restart_count"] == 1
    assert daemon.events("restart", since) == []  # the budget was not reset
    assert daemon.events("restart_exhausted", since) == []  # announced once, before
    assert daemon.terminate() == 0
    saved = daemon.status("broken")
    assert saved is not None
    assert saved["restart_count"] == 1


def test_failing_restart_command_is_reported_and_not_counted(daemon: DaemonProc) -> None:
    write(
        daemon,
        "flaky",
        "exec",
        target="exit 1",
        retries=1,
        auto_restart=True,
        restart_command=("false",),
    )
    daemon.start()
    status = daemon.wait_status("flaky", lambda s: s["restart_failures"] >= 2)
    assert status["restart_count"] == 0
    assert "false: exit status 1" in status["last_restart_error"]
    assert for_workload(daemon.wait_event("restart_failed"), "flaky")
    assert daemon.terminate() == 0


def test_restart_command_past_its_deadline_fails_and_checks_go_on(daemon: DaemonProc) -> None:
    write(
        daemon,
        "hangs",
        "exec",
        target="exit 1",
        retries=1,
        auto_restart=True,
        restart_command=("sleep", "30"),
    )
    daemon.start("--restart-timeout", "1s")
    lines = daemon.wait_event("restart_failed", timeout=10)
    assert "no result within 1s" in lines[0]
    before = daemon.wait_status("hangs", lambda s: s["restart_failures"] >= 1)
    daemon.wait_status("hangs", lambda s: s["total_checks"] >= before["total_checks"] + 3)
    assert daemon.terminate() == 0


def test_sigterm_exits_zero_and_first_checks_come_quickly(
    daemon: DaemonProc, services: Services
) -> None:
    http, tcp = services.start("http"), services.start("tcp")
    slow = {"interval": 30.0, "timeout": 2.0, "host": "127.0.0.1"}
    write(daemon, "web", "http", port=http.port, **slow)
    write(daemon, "cache", "tcp", port=tcp.port, **slow)
    write(daemon, "job", "exec", target="true", interval=30.0)
    daemon.start()
    daemon.wait_event("daemon_started")
    # Checks are spread over the first second, not one interval (30s) after start.
    for name in ("web", "cache", "job"):
        status = daemon.wait_status(name, lambda s: s["total_checks"] >= 1, timeout=3)
        assert status["state"] == "healthy"
    assert daemon.terminate() == 0
    data = json.loads((daemon.status_dir / "statuses.json").read_text())
    assert isinstance(data, list)
    assert sorted(s["workload"] for s in data) == ["cache", "job", "web"]
    assert daemon.events("daemon_stopped")


def test_sigterm_lets_a_check_in_flight_finish(daemon: DaemonProc) -> None:
    write(daemon, "slow", "exec", target="sleep 2", interval=30.0, timeout=10.0)
    daemon.start()
    daemon.wait_event("daemon_started")
    time.sleep(1.2)  # the first check starts within 1s and runs for 2s: it is in flight now
    assert daemon.terminate() == 0
    assert daemon.events("daemon_stopping")[0].split().count("in_flight=1") == 1
    status = daemon.status("slow")
    assert status is not None
    assert status["total_checks"] == 1
    assert status["state"] == "healthy"


def test_a_bad_config_file_never_stops_the_others(daemon: DaemonProc) -> None:
    bad = daemon.config_dir / "bad.yaml"
    bad.write_text("workload: bad\ntype: http\ninterval: soon\n")
    write(daemon, "good", "exec", target="true")
    daemon.start()
    daemon.wait_status("good", lambda s: s["total_checks"] >= 2 and s["state"] == "healthy")
    errors = daemon.wait_event("config_error")
    assert f"{bad}:3: interval:" in errors[0]
    assert daemon.status("bad") is None
    assert daemon.terminate() == 0


def test_disabled_workload_is_never_checked(daemon: DaemonProc, env: dict[str, str]) -> None:
    args = ["add", "--config-dir", str(daemon.config_dir), "off", "--type", "exec"]
    added = run_cli([*args, "--target", "true", "--interval", "200ms", "--disabled"], env)
    assert added.returncode == 0, added.stderr
    write(daemon, "on", "exec", target="true")
    daemon.start()
    daemon.wait_status("on", lambda s: s["total_checks"] >= 3)
    status = daemon.status("off")
    assert status is not None
    assert status["state"] == "disabled"
    assert status["total_checks"] == 0
    assert status["healthy"] is False
    assert daemon.terminate() == 0


def test_no_host_falls_back_to_loopback_and_says_so(daemon: DaemonProc, services: Services) -> None:
    svc = services.start("tcp")
    write(daemon, "nohost", "tcp", port=svc.port)  # no host: machinectl, then fallback
    daemon.start()
    status = daemon.wait_status("nohost", lambda s: s["state"] == "healthy")
    assert status["address"] == "127.0.0.1"
    assert status["address_source"].startswith("fallback")
    assert for_workload(daemon.events("address_fallback"), "nohost")
    assert daemon.terminate() == 0


def test_statuses_json_is_read_back_by_status(daemon: DaemonProc, env: dict[str, str]) -> None:
    write(daemon, "job", "exec", target="true")
    daemon.start()
    daemon.wait_status("job", lambda s: s["state"] == "healthy")
    assert daemon.terminate() == 0
    dirs = ["--config-dir", str(daemon.config_dir), "--status-dir", str(daemon.status_dir)]
    shown = run_cli(["status", *dirs, "job", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == daemon.status("job")


def test_config_dir_that_does_not_exist_is_reported(tmp_path: Path, daemon: DaemonProc) -> None:
    daemon.config_dir.rmdir()
    daemon.start()
    errors = daemon.wait_event("config_error")
    assert "config directory does not exist" in errors[0]
    assert daemon.terminate() == 0
