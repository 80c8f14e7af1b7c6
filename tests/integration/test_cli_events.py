"""``healthd events``: the journal read straight from events.db, as a user runs it, beside the
running daemon and without one; and ``--follow`` printing events as the daemon commits them,
until Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    PY,
    ApiClient,
    DaemonProc,
    connect,
    free_port,
    run_cli,
    wait_for,
    with_token,
    write,
)


def events_cli(daemon: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["events", "--status-dir", str(daemon.status_dir), *args], daemon.env)


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, output(done)
    return [json.loads(line) for line in done.stdout.splitlines()]


def rows(done: subprocess.CompletedProcess[str]) -> list[list[str]]:
    """The table: (time, type, workload) of each row, the header checked."""
    assert done.returncode == 0, output(done)
    header, *lines = done.stdout.splitlines()
    assert header.split() == ["TIME", "TYPE", "WORKLOAD", "MESSAGE"], done.stdout
    return [line.split()[:3] for line in lines]


def start_with_db(daemon: DaemonProc) -> ApiClient:
    """The daemon with db, down from the start (one check: check_fail, unhealthy), paused."""
    token = with_token(daemon)
    write(daemon, "db", "tcp", port=free_port(), host="127.0.0.1", retries=1, interval=3600)
    daemon.start()
    api = connect(daemon, token)
    api.wait_status("db", lambda s: s["state"] == "unhealthy")
    api.post("/v1/workloads/db/pause", {"reason": "cli test"})
    wait_for("paused in the journal", lambda: api.get("/v1/events?type=paused")["events"])
    return api


def test_events_shows_the_journal_beside_the_daemon_and_without_it(daemon: DaemonProc) -> None:
    api = start_with_db(daemon)
    shown = rows(events_cli(daemon))
    assert [r[1:] for r in shown] == [
        ["daemon_started", "-"],
        ["check_fail", "db"],
        ["unhealthy", "db"],
        ["paused", "db"],
    ]
    for when, _, _ in shown:
        assert datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ")
    # --json: the API's shape, one event a line.
    assert json_lines(events_cli(daemon, "--json")) == api.get("/v1/events")["events"]

    assert daemon.terminate() == 0
    db = daemon.status_dir / "events.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    everything = json_lines(events_cli(daemon, "--json"))
    assert [e["type"] for e in everything] == [
        "daemon_started",
        "check_fail",
        "unhealthy",
        "paused",
        "daemon_stopping",
    ]
    assert [e["id"] for e in everything] == [1, 2, 3, 4, 5]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # read, never written

    by_type = json_lines(events_cli(daemon, "--json", "--type", "unhealthy,paused"))
    assert [e["type"] for e in by_type] == ["unhealthy", "paused"]
    again = json_lines(events_cli(daemon, "--json", "--type", "unhealthy", "--type", "paused"))
    assert again == by_type
    db_only = json_lines(events_cli(daemon, "--json", "--workload", "db"))
    assert {e["workload"] for e in db_only} == {"db"}
    assert len(db_only) == 3
    assert json_lines(events_cli(daemon, "--json", "--limit", "2")) == everything[-2:]
    assert json_lines(events_cli(daemon, "--json", "--since", "1h")) == everything
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    none = events_cli(daemon, "--since", future)
    assert (none.returncode, none.stdout, none.stderr) == (0, "", "no events\n"), output(none)


def test_events_without_a_journal_says_where_it_looked_and_exits_1(tmp_path: Path) -> None:
    status_dir = tmp_path / "status"
    done = run_cli(["events", "--status-dir", str(status_dir)], {})
    assert done.returncode == 1, output(done)
    assert f"no event journal at {status_dir / 'events.db'}" in done.stderr
    assert not status_dir.exists()  # nothing created


def test_events_with_a_journal_that_is_not_a_database_says_so_and_exits_1(
    tmp_path: Path,
) -> None:
    garbage = b"not SQLite at all " * 300
    (tmp_path / "events.db").write_bytes(garbage)
    done = run_cli(["events", "--status-dir", str(tmp_path)], {})
    assert done.returncode == 1, output(done)
    assert done.stderr.startswith(f"healthd: {tmp_path / 'events.db'}: "), output(done)
    assert "Traceback" not in done.stderr
    assert (tmp_path / "events.db").read_bytes() == garbage


@pytest.mark.parametrize(
    "args",
    [["--type", "bogus"], ["--type", "healthy,nope"], ["--since", "yesterday"], ["--limit", "-1"]],
)
def test_events_refuses_bad_filters_with_exit_2(tmp_path: Path, args: list[str]) -> None:
    done = run_cli(["events", "--status-dir", str(tmp_path), *args], {})
    assert done.returncode == 2, output(done)
    assert done.stderr.startswith("healthd: "), output(done)


class Lines:
    """A process's stdout, read line by line by a thread: ``wait`` for the one wanted."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout
        self.thread = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def wait(self, what: str, probe: Any, timeout: float = 15.0) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            what,
            lambda: next((e for e in self.events() if probe(e)), None),
            timeout,
            lambda: "".join(self.lines),
        )
        return found


@pytest.fixture
def first_run(daemon: DaemonProc) -> DaemonProc:
    """A daemon that ran once and stopped: events.db exists, no daemon runs."""
    start_with_db(daemon)
    assert daemon.terminate() == 0
    return daemon


def test_follow_prints_new_events_as_they_are_committed_until_ctrl_c(
    first_run: DaemonProc,
) -> None:
    daemon = first_run
    argv = ["events", "--status-dir", str(daemon.status_dir), "--follow", "--json"]
    proc = subprocess.Popen(
        [PY, "-m", "healthd", *argv],
        env=daemon.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = Lines(proc)
    try:
        # What is there already, with no daemon running...
        out.wait("the journal so far", lambda e: e["type"] == "daemon_stopping")
        assert [e["id"] for e in out.events()] == [1, 2, 3, 4, 5]
        # ...then what a new run of the daemon commits, as it commits it.
        daemon.start()
        token = daemon.daemon_config.with_name("api.token").read_text().strip()
        api = connect(daemon, token)
        started = out.wait("the new run's start", lambda e: e["id"] == 6)
        assert started["type"] == "daemon_started"
        api.post("/v1/workloads/db/resume")  # paused in the first run, and still
        resumed = out.wait("resumed", lambda e: e["type"] == "resumed")
        assert resumed["workload"] == "db"
        ids = [e["id"] for e in out.events()]
        assert ids == list(range(1, ids[-1] + 1))  # none twice, none missed
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        start = time.monotonic()
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - start < 2
        assert proc.stderr is not None
        assert proc.stderr.read() == ""  # no traceback
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        out.thread.join(timeout=5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
