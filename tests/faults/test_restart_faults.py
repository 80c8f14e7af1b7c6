"""Restart commands that hang, fail or do not exist, run by the real daemon: each attempt is
reported with its reason, the next one waits restart_delay, and the workload stays monitored."""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path

import pytest

from integration.harness import DaemonProc, alive, free_port, wait_for, write

from .targets import (
    canary_keeps_going,
    fd_count,
    gone,
    read_pids,
    script,
    start_with_canary,
)

DELAY = 1.5  # restart_delay


def broken(daemon: DaemonProc, restart: tuple[str, ...]) -> int:
    """A tcp workload nothing answers, restarted with ``restart`` after each failure."""
    port = free_port()
    write(
        daemon,
        "svc",
        "tcp",
        host="127.0.0.1",
        port=port,
        interval=0.1,
        timeout=0.5,
        retries=1,
        auto_restart=True,
        restart_delay=DELAY,
        restart_command=restart,
    )
    return port


def failed_restarts(daemon: DaemonProc) -> list[str]:
    return [x for x in daemon.events("restart_failed") if "workload=svc" in x.split()]


def ts(line: str) -> float:
    stamp = line.split(maxsplit=1)[0].removeprefix("ts=").replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def test_hanging_restart_is_killed_at_its_deadline_and_the_next_is_paced(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    pids, starts = tmp_path / "pids", tmp_path / "starts"
    restart = script(
        tmp_path / "restart.sh",
        f"echo $$ >> {pids}\ncut -d' ' -f1 /proc/uptime >> {starts}\n"
        f"/bin/sleep 600 &\necho $! >> {pids}\necho stopping the old instance...\nwait\n",
    )
    broken(daemon, (str(restart),))
    try:
        client = start_with_canary(daemon, "--restart-timeout", "1s")
        status = client.wait_status("svc", lambda s: s["restart_failures"] >= 1, timeout=10)
        gone(read_pids(pids), timeout=1.0)  # the script and its child: killed at 1s
        error = (
            f"{restart}: no result within 1s, process group killed: stopping the old instance..."
        )
        assert status["last_restart_error"] == error
        assert status["restart_count"] == 0  # a failed attempt does not count
        assert status["state"] == "unhealthy"
        canary_keeps_going(client)
        checks = client.get("/v1/status/svc")["total_checks"]
        status = client.wait_status("svc", lambda s: s["restart_failures"] >= 2, timeout=10)
        assert status["total_checks"] > checks  # checked between the attempts
        gone(read_pids(pids), timeout=1.0)
        assert len(read_pids(pids)) == 4
        first, second = (float(x) for x in starts.read_text().split()[:2])
        # each attempt ran its full second, then restart_delay passed before the next began
        assert second - first >= 1.0 + DELAY - 0.05, (first, second)
        lines = failed_restarts(daemon)
        assert f"restart attempt 1 failed: {error}; next try in 1.5s at the earliest" in lines[0]
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        gone(read_pids(pids))


def test_failing_restart_reports_its_exit_status_and_output(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    restart = script(tmp_path / "restart.sh", "echo bind: address already in use >&2\nexit 3\n")
    broken(daemon, (str(restart), "{workload}"))
    client = start_with_canary(daemon)
    status = client.wait_status("svc", lambda s: s["restart_failures"] >= 2, timeout=10)
    canary_keeps_going(client)
    error = f"{restart} svc: exit status 3: bind: address already in use"
    assert status["last_restart_error"] == error
    assert status["restart_count"] == 0
    assert status["monitored"] is True
    lines = failed_restarts(daemon)
    assert f"restart attempt 1 failed: {error}; next try in 1.5s" in lines[0], lines
    assert ts(lines[1]) - ts(lines[0]) >= DELAY - 0.05
    assert daemon.terminate() == 0
    saved = daemon.status("svc")
    assert saved is not None
    assert saved["last_restart_error"] == error
    assert saved["restart_failures"] >= 2


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("/nonexistent/healthd-restart", "No such file or directory"),
        ("healthd-no-such-tool", "command not found on the daemon's PATH"),
    ],
    ids=["absolute", "bare-name"],
)
def test_missing_restart_program_is_a_clear_error_and_monitoring_goes_on(
    daemon: DaemonProc, program: str, reason: str
) -> None:
    port = broken(daemon, (program, "{workload}"))
    client = start_with_canary(daemon)
    status = client.wait_status("svc", lambda s: s["restart_failures"] >= 2, timeout=10)
    error = f"{program}: {reason}"
    assert status["last_restart_error"] == error
    assert status["state"] == "unhealthy"
    assert status["last_error"] == f"TCP check failed: 127.0.0.1:{port}: connection refused"
    lines = failed_restarts(daemon)
    assert f"restart attempt 1 failed: {error}" in lines[0]
    assert ts(lines[1]) - ts(lines[0]) >= DELAY - 0.05
    checks, fds = status["total_checks"], fd_count(daemon.pid)
    status = client.wait_status("svc", lambda s: s["restart_failures"] >= 4, timeout=10)
    assert status["total_checks"] >= checks + 5
    assert status["monitored"] is True
    assert fd_count(daemon.pid) <= fds + 1  # nothing kept from the failed attempts
    canary_keeps_going(client)
    assert daemon.terminate() == 0


def field(line: str, name: str) -> int:
    """The integer ``name=N`` of a logfmt line."""
    values = [item.partition("=")[2] for item in line.split() if item.startswith(f"{name}=")]
    assert len(values) == 1, line
    return int(values[0])


def test_daemon_stopped_twice_during_a_hanging_restart_kills_it_and_exits(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    """A first SIGTERM lets the restart in flight run (within the stop grace); a second one
    cancels it: its process group is killed, the status is saved, the daemon exits."""
    pids = tmp_path / "pids"
    restart = script(
        tmp_path / "restart.sh", f"echo $$ >> {pids}\n/bin/sleep 600 &\necho $! >> {pids}\nwait\n"
    )
    broken(daemon, (str(restart),))
    try:
        start_with_canary(daemon, "--restart-timeout", "60s")
        wait_for("the restart to be running", lambda: len(read_pids(pids)) == 2)
        running = read_pids(pids)
        assert daemon.proc is not None
        since = len(daemon.log())
        daemon.proc.send_signal(signal.SIGTERM)
        stopping = daemon.wait_event("daemon_stopping", since)
        # the restart, and maybe the canary's check if the signal came in the middle of one
        assert field(stopping[0], "in_flight") in (1, 2), stopping[0]
        assert all(alive(p) for p in running)  # the first request lets it run
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=5) == 0
        gone(running, timeout=1.0)
        forced = daemon.events("stop_forced", since)
        assert forced, daemon.log()
        assert field(forced[0], "cancelled") in (1, 2), forced[0]
        saved = daemon.status("svc")
        assert saved is not None
        assert saved["restart_count"] == 0
    finally:
        daemon.kill()
        gone(read_pids(pids))
