"""Issue 7's restart policies in the real daemon: real exec checks reading flag files, real
restart commands that record when they ran, the real API and CLI. Durations are short and the
bounds generous: each test shows the rule (a doubling, a window, a hold), not the timer's
precision, which the pure state machine's tests pin down with a manual clock."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from .harness import ApiClient, DaemonProc, connect, run_cli, wait_for, with_token, write


class Recorder:
    """A restart command that appends the time it ran to a file (and may fix the workload by
    creating its flag file)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.log = directory / f"{name}.restarts"
        self.flag = directory / f"{name}.up"

    def command(self, *, fixes: bool) -> tuple[str, ...]:
        fix = f"; touch {self.flag}" if fixes else ""
        return ("sh", "-c", f"date +%s.%N >> {self.log}{fix}")

    def check(self) -> str:
        """The exec check: healthy while the flag file exists."""
        return f"test -e {self.flag}"

    def times(self) -> list[float]:
        if not self.log.exists():
            return []
        return [float(line) for line in self.log.read_text().split()]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def cli(daemon: DaemonProc, *args: str) -> tuple[int, str]:
    where = ["--status-dir", str(daemon.status_dir), "--daemon-config", str(daemon.daemon_config)]
    done = run_cli([args[0], *where, *args[1:]], daemon.env)
    return done.returncode, done.stdout + done.stderr


def events(
    client: ApiClient, workload: str, *types: str, at_least: int = 1
) -> list[dict[str, Any]]:
    """The workload's events of these types from the journal, once ``at_least`` of them are
    committed (an event is shown only after its commit, a few milliseconds after it)."""

    def found() -> list[dict[str, Any]] | None:
        listed: list[dict[str, Any]] = client.get(
            f"/v1/events?workload={workload}&type={','.join(types)}&limit=1000"
        )["events"]
        return listed if len(listed) >= at_least else None

    return wait_for(f"{at_least} {'/'.join(types)} event(s) of {workload}", found)


def test_restart_backoff_doubles_the_delay_up_to_the_cap(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    rec = Recorder(tmp_path, "crashy")
    write(
        daemon,
        "crashy",
        "exec",
        target="false",  # never comes back: every restart is followed by another
        interval=0.1,
        retries=1,
        auto_restart=True,
        restart_delay=0.4,
        restart_backoff=True,
        max_restart_delay=1.6,
        restart_command=rec.command(fixes=False),
    )
    token = with_token(daemon)
    daemon.start()
    client = connect(daemon, token)
    times = wait_for("five restarts", lambda: rec.times() if len(rec.times()) >= 5 else None)
    seen = gaps(times[:5])
    # Never sooner than the delay (it runs from the end of one attempt to the next check that
    # finds the workload failing); doubling from 0.4 s, capped at 1.6 s.
    for gap, nominal in zip(seen, [0.4, 0.8, 1.6, 1.6], strict=True):
        assert gap >= nominal - 0.02, seen
    assert seen[3] < 3.2 - 0.2, seen  # the cap: not doubled again to 3.2 s
    status = client.wait_status("crashy", lambda s: s["restart_count"] >= 5)
    assert status["current_restart_delay_seconds"] == 1.6
    # statuses.json is saved after each restart: wait for the save that has the fifth one (the
    # delay is already 1.6 s after the fourth)
    saved = daemon.wait_status(
        "crashy",
        lambda s: s.get("current_restart_delay_seconds") == 1.6 and s["restart_count"] >= 5,
    )
    assert saved["restart_count"] >= 5
    assert daemon.terminate() == 0


def test_restart_window_frees_the_budget_and_stopped_checks_resume_by_themselves(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    rec = Recorder(tmp_path, "job")
    write(
        daemon,
        "job",
        "exec",
        target="false",
        interval=0.1,
        retries=1,
        auto_restart=True,
        max_restarts=1,
        restart_window=2.0,
        on_exhausted="stop",
        restart_command=rec.command(fixes=False),
    )
    token = with_token(daemon)
    daemon.start()
    client = connect(daemon, token)
    stopped = client.wait_status("job", lambda s: s["checks_stopped"] is True)
    assert (stopped["state"], stopped["restart_budget_left"]) == ("gave_up", 0)
    assert stopped["restart_budget_frees_at"] is not None
    checks = stopped["total_checks"]
    time.sleep(0.6)  # six intervals: a check that still ran would show
    assert client.get("/v1/status/job")["total_checks"] == checks
    times = wait_for("the second restart", lambda: rec.times()[1:] and rec.times(), timeout=15)
    assert times[1] - times[0] >= 2.0 - 0.05, times  # when the first left the window
    assert times[1] - times[0] < 2.0 + 5.0, times
    [exhausted] = events(client, "job", "restart_exhausted")
    assert "checks stopped, restarts resume in" in exhausted["message"]
    restarts = events(client, "job", "restart", at_least=2)
    assert restarts[1]["state_from"] == "gave_up"
    assert daemon.terminate() == 0
    saved = daemon.status("job")
    assert saved is not None
    assert len(saved["recent_restarts"]) == 1  # the older one left the window


def test_healthd_reset_restores_the_budget_of_a_workload_that_stopped(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    rec = Recorder(tmp_path, "api")
    write(
        daemon,
        "api",
        "exec",
        target="false",
        interval=0.1,
        retries=1,
        auto_restart=True,
        max_restarts=2,
        restart_delay=0.2,
        on_exhausted="stop",
        restart_command=rec.command(fixes=False),
    )
    token = with_token(daemon)
    daemon.start()
    client = connect(daemon, token)
    stopped = client.wait_status("api", lambda s: s["checks_stopped"] is True)
    assert (stopped["state"], stopped["restart_count"]) == ("gave_up", 2)
    assert stopped["restart_budget_frees_at"] is None  # no window: only a reset helps
    time.sleep(0.6)
    assert len(rec.times()) == 2
    assert client.get("/v1/status/api")["total_checks"] == stopped["total_checks"]

    code, out = cli(daemon, "reset", "api")
    assert code == 0, out
    assert out.startswith("api: restart budget restored (2 restart(s) left); state "), out

    again = client.wait_status(
        "api", lambda s: s["restart_count"] == 4 and s["checks_stopped"] is True
    )
    assert again["state"] == "gave_up"
    assert len(rec.times()) == 4
    [reset] = events(client, "api", "reset")
    assert (reset["state_from"], reset["state_to"]) == ("gave_up", "unhealthy")
    assert reset["details"] == {"restart_count": 2, "budget_left": 2}
    assert len(events(client, "api", "restart_exhausted", at_least=2)) == 2  # once a budget
    assert daemon.terminate() == 0
    saved = daemon.status("api")
    assert saved is not None
    # restart_count is the lifetime total, as the reference counts it; the budget counts on
    assert (saved["restart_count"], saved["restart_count_at_reset"]) == (4, 2)
    assert saved["checks_stopped"] is True

    # no daemon: the reset is written to statuses.json for the next start
    code, out = cli(daemon, "reset", "api")
    assert code == 0, out
    assert "the daemon is not running; it applies at start" in out
    saved = daemon.status("api")
    assert saved is not None
    assert (saved["state"], saved["restart_count_at_reset"]) == ("unhealthy", 4)
    assert "checks_stopped" not in saved


def test_depends_on_holds_restarts_until_the_dependency_recovers(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    db, app = Recorder(tmp_path, "db"), Recorder(tmp_path, "app")
    db.flag.touch()
    app.flag.touch()
    write(daemon, "db", "exec", target=db.check(), interval=0.1, retries=1)
    write(
        daemon,
        "app",
        "exec",
        target=app.check(),
        interval=0.1,
        retries=1,
        auto_restart=True,
        depends_on=("db",),
        restart_command=app.command(fixes=True),
    )
    token = with_token(daemon)
    daemon.start()
    client = connect(daemon, token)
    for name in ("db", "app"):
        client.wait_status(name, lambda s: s["state"] == "healthy")
    db.flag.unlink()  # the database goes down, and the app with it
    client.wait_status("db", lambda s: s["state"] == "unhealthy")
    app.flag.unlink()
    held = client.wait_status("app", lambda s: s["restart_held"] is not None)
    assert held["restart_held"] == "dependency db unhealthy"
    assert held["state"] == "unhealthy"
    time.sleep(0.6)  # six failing checks of the app: none restarts it
    assert app.times() == []
    [event] = events(client, "app", "restart_held")
    assert event["message"] == "restart held: dependency db unhealthy"

    recovered = time.time()
    db.flag.touch()
    healthy = client.wait_status("app", lambda s: s["state"] == "healthy")
    assert healthy["restart_count"] == 1
    assert healthy["restart_held"] is None
    [restarted] = app.times()
    assert restarted >= recovered
    assert daemon.terminate() == 0


def test_flapping_is_announced_once_holds_restarts_and_ends(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    rec = Recorder(tmp_path, "flaky")
    rec.flag.touch()
    write(
        daemon,
        "flaky",
        "exec",
        target=rec.check(),
        interval=0.1,
        retries=1,
        auto_restart=True,
        restart_delay=0.1,
        flap_threshold=2,
        flap_window=4.0,
        restart_command=rec.command(fixes=True),
    )
    token = with_token(daemon)
    daemon.start()
    client = connect(daemon, token)
    client.wait_status("flaky", lambda s: s["state"] == "healthy")
    rec.flag.unlink()  # change 1: unhealthy; restarted, which fixes it: change 2, healthy
    client.wait_status("flaky", lambda s: s["restart_count"] == 1 and s["state"] == "healthy")
    rec.flag.unlink()  # change 3: more than 2 within the window
    flapping = client.wait_status("flaky", lambda s: s["flapping"] is True)
    assert flapping["flapping_since"]
    held = client.wait_status("flaky", lambda s: s["restart_held"] == "flapping")
    assert held["state"] == "unhealthy"
    time.sleep(0.5)  # five failing checks, well past restart_delay: held, not restarted
    assert len(rec.times()) == 1
    assert client.get("/v1/status/flaky")["state"] == "unhealthy"
    rec.flag.touch()  # change 4; then stable until the changes leave the 4 s window
    stable = client.wait_status("flaky", lambda s: s["flapping"] is False, timeout=20)
    assert stable["state"] == "healthy"
    found = events(client, "flaky", "flapping", "flapping_stopped", at_least=2)
    assert [e["type"] for e in found] == ["flapping", "flapping_stopped"]
    assert found[0]["details"]["changes"] == 3
    assert len(events(client, "flaky", "unhealthy", "healthy", at_least=4)) == 4  # all said
    assert daemon.terminate() == 0


def test_start_period_after_start_and_after_each_restart(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    rec = Recorder(tmp_path, "slow")  # the flag never exists: it never starts
    write(
        daemon,
        "slow",
        "exec",
        target=rec.check(),
        interval=0.1,
        retries=1,
        auto_restart=True,
        restart_delay=0.1,
        start_period=1.5,
        restart_command=rec.command(fixes=False),
    )
    token = with_token(daemon)
    began = time.time()
    daemon.start()
    client = connect(daemon, token)
    starting = client.wait_status("slow", lambda s: s["total_fails"] >= 2)
    if not rec.times():  # still in the start period (it must be, unless the host stalled)
        assert (starting["state"], starting["consecutive_fails"]) == ("starting", 0)
        assert starting["starting_until"] != "0001-01-01T00:00:00Z"
    times = wait_for("two restarts", lambda: rec.times()[1:] and rec.times(), timeout=15)
    assert times[0] - began >= 1.5, times
    assert times[1] - times[0] >= 1.5, times  # a new period after the restart, not 0.1 s
    fails = events(client, "slow", "check_fail")
    assert fails[0]["details"]["start_period"] is True
    assert daemon.terminate() == 0


def test_success_threshold_needs_successes_in_a_row(daemon: DaemonProc, tmp_path: Path) -> None:
    rec = Recorder(tmp_path, "svc")
    # checked once at start, then only when asked: each POST .../check is one result
    write(daemon, "svc", "exec", target=rec.check(), interval=3600, retries=1, success_threshold=3)
    token = with_token(daemon)
    daemon.start()
    client = connect(daemon, token)
    client.wait_status("svc", lambda s: s["state"] == "unhealthy")
    rec.flag.touch()
    states = [client.post("/v1/workloads/svc/check")["state"] for _ in range(2)]
    assert states == ["unhealthy", "unhealthy"]
    assert client.get("/v1/status/svc")["consecutive_successes"] == 2
    rec.flag.unlink()
    assert client.post("/v1/workloads/svc/check")["state"] == "unhealthy"
    rec.flag.touch()
    states = [client.post("/v1/workloads/svc/check")["state"] for _ in range(3)]
    assert states == ["unhealthy", "unhealthy", "healthy"]
    [healthy] = events(client, "svc", "healthy")
    assert healthy["details"] == {"successes": 3}
    assert daemon.terminate() == 0


def test_a_dependency_cycle_or_an_unknown_dependency_holds_no_restart(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    recs = {name: Recorder(tmp_path, name) for name in ("a", "b", "c")}
    needs = {"a": ("b",), "b": ("a",), "c": ("ghost",)}  # a and b wait for each other
    for name, rec in recs.items():
        write(
            daemon,
            name,
            "exec",
            target="false",
            interval=0.1,
            retries=1,
            auto_restart=True,
            max_restarts=1,
            depends_on=needs[name],
            restart_command=rec.command(fixes=False),
        )
    daemon.start()
    for name in recs:  # all unhealthy together, and still each restarted: no deadlock
        daemon.wait_status(name, lambda s: s["state"] == "gave_up" and s["restart_count"] == 1)
    assert all(len(rec.times()) == 1 for rec in recs.values())
    [cycle] = daemon.events("dependency_cycle")
    assert "workloads=a,b" in cycle.split()
    [unknown] = daemon.events("dependency_not_configured")
    assert {"workload=c", "depends_on=ghost"} <= set(unknown.split())
    assert daemon.terminate() == 0
