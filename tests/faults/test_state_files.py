"""statuses.json and events.db damaged while the daemon was down: it starts anyway, keeps what
can be kept, moves the bad file aside (kept for a human) and says so in an error line. The
next starts find nothing wrong: never a crash loop."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from integration.harness import DaemonProc, Services, connect, free_port, wait_for, write

START_AGAIN = 3


def setup_workloads(daemon: DaemonProc, services: Services) -> None:
    svc = services.start("http")
    write(daemon, "alpha", "http", port=svc.port, host="127.0.0.1")
    write(daemon, "beta", "tcp", port=free_port(), host="127.0.0.1", retries=1)


def first_run(daemon: DaemonProc) -> list[dict[str, Any]]:
    """Run until both workloads have a history and events, stop cleanly; the statuses."""
    daemon.start()
    daemon.wait_status("alpha", lambda s: s["state"] == "healthy" and s["total_checks"] >= 5)
    daemon.wait_status("beta", lambda s: s["state"] == "unhealthy")
    assert daemon.terminate() == 0
    statuses = daemon.statuses()
    assert statuses is not None
    return statuses


def aside(status_dir: Path, name: str) -> list[Path]:
    """The copies of ``name`` moved aside (without the -wal and -shm moved with them)."""
    found = status_dir.glob(f"{name}.corrupt-*")
    return sorted(p for p in found if not p.name.endswith(("-wal", "-shm")))


def one_line(daemon: DaemonProc, event: str, since: int) -> dict[str, str]:
    """The only log line of ``event`` since ``since``, as its key=value fields (unquoted)."""
    lines = daemon.events(event, since)
    assert len(lines) == 1, daemon.log()[since:]
    fields: dict[str, str] = {}
    rest = lines[0]
    while rest:
        key, rest = rest.split("=", 1)
        if rest.startswith('"'):
            end = rest.index('"', 1)
            while rest[end - 1] == "\\":
                end = rest.index('"', end + 1)
            fields[key.strip()], rest = rest[1:end], rest[end + 1 :]
        else:
            value, _, rest = rest.partition(" ")
            fields[key.strip()] = value
        rest = rest.lstrip()
    return fields


def start_and_stop(daemon: DaemonProc) -> tuple[int, list[str]]:
    """One more start: monitors, stops with 0. (where its log starts, its error lines)"""
    since = len(daemon.log())
    daemon.start()
    client = connect(daemon)
    client.wait_status("alpha", lambda s: s["state"] == "healthy")
    assert daemon.terminate() == 0
    errors = [line for line in daemon.log()[since:].splitlines() if "level=error" in line]
    return since, errors


def test_truncated_statuses_json_keeps_its_whole_entries(
    daemon: DaemonProc, services: Services
) -> None:
    setup_workloads(daemon, services)
    before = {s["workload"]: s for s in first_run(daemon)}
    path = daemon.status_dir / "statuses.json"
    data = path.read_bytes()
    cut = data[: data.index(b'{"workload": "beta"') + 30]  # beta's line, cut short
    path.write_bytes(cut)

    since = len(daemon.log())
    daemon.start()
    client = connect(daemon)
    alpha = client.get("/v1/status/alpha")
    beta = client.get("/v1/status/beta")
    line = one_line(daemon, "status_file_unusable", since)
    assert line["level"] == "error"
    assert line["error"].startswith(f"{path}: not valid JSON: ")
    assert line["kept"] == "alpha"
    assert line["consequence"] == "the 1 whole entries are kept; other counters start from zero"
    [moved] = aside(daemon.status_dir, "statuses.json")
    assert line["moved_to"] == str(moved)
    assert moved.read_bytes() == cut  # kept as it was found
    # alpha's counters went on from where they were; beta's started again
    assert alpha["total_checks"] >= before["alpha"]["total_checks"]
    assert alpha["last_healthy"] >= before["alpha"]["last_healthy"]
    assert beta["total_checks"] < before["beta"]["total_checks"] + 2
    assert daemon.terminate() == 0

    for _ in range(START_AGAIN):
        _, errors = start_and_stop(daemon)
        assert [e for e in errors if "beta" not in e] == []  # beta's failures only
        assert len(aside(daemon.status_dir, "statuses.json")) == 1


def test_garbage_statuses_json_is_moved_aside_and_counting_starts_over(
    daemon: DaemonProc, services: Services
) -> None:
    setup_workloads(daemon, services)
    first_run(daemon)
    garbage = os.urandom(4096)
    (daemon.status_dir / "statuses.json").write_bytes(garbage)
    since = len(daemon.log())
    daemon.start()
    client = connect(daemon)
    assert client.get("/v1/status/alpha")["total_checks"] < 5
    line = one_line(daemon, "status_file_unusable", since)
    assert line["kept"] == ""
    [moved] = aside(daemon.status_dir, "statuses.json")
    assert moved.read_bytes() == garbage
    assert daemon.terminate() == 0
    for _ in range(START_AGAIN):
        since, _ = start_and_stop(daemon)
        assert daemon.events("status_file_unusable", since) == []


def committed_events(daemon: DaemonProc, starts: int = 1) -> list[dict[str, Any]]:
    """The journal's events, once it holds ``starts`` daemon_started events (commits lag the
    start by some milliseconds)."""
    client = connect(daemon)

    def found() -> list[dict[str, Any]] | None:
        events: list[dict[str, Any]] = client.get("/v1/events?limit=1000")["events"]
        started = [e for e in events if e["type"] == "daemon_started"]
        return events if len(started) >= starts else None

    return wait_for(f"{starts} daemon_started events", found, detail=daemon.log)


def test_garbage_events_db_is_moved_aside_and_a_new_journal_started(
    daemon: DaemonProc, services: Services
) -> None:
    setup_workloads(daemon, services)
    first_run(daemon)
    garbage = os.urandom(50_000)
    db = daemon.status_dir / "events.db"
    db.write_bytes(garbage)
    since = len(daemon.log())
    daemon.start()
    events = committed_events(daemon)
    line = one_line(daemon, "event_journal_unusable", since)
    assert line["level"] == "error"
    assert line["error"] == f"{db}: file is not a database"
    [moved] = aside(daemon.status_dir, "events.db")
    assert line["moved_to"] == str(moved)
    assert moved.read_bytes() == garbage
    assert one_line(daemon, "event_journal_salvaged", since)["events"] == "0"  # nothing readable
    assert [e["type"] for e in events][:1] == ["daemon_started"]  # a new journal, from 1
    assert events[0]["id"] == 1
    assert daemon.terminate() == 0
    for _ in range(START_AGAIN):
        since, errors = start_and_stop(daemon)
        assert daemon.events("event_journal_unusable", since) == []
        assert [e for e in errors if "beta" not in e] == []


def cut_short(db: Path) -> None:
    """The file cut short in the middle of a page (a crash of the host mid-write), after the
    first page of the events table's rows: SQLite refuses such a file whole."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        [leaf] = conn.execute(
            "SELECT min(pageno) FROM dbstat WHERE name = 'events' AND pagetype = 'leaf'"
        ).fetchone()
    cut = leaf * size + size // 2
    assert cut < db.stat().st_size
    os.truncate(db, cut)


def overwrite_a_page(db: Path) -> None:
    """A page of an index overwritten (a torn write of the host). The file opens and reads
    fine (checked here), and only the next commit, which updates that index, would fail."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        [page] = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'events_by_time' ORDER BY pageno LIMIT 1"
        ).fetchone()
    with open(db, "r+b") as fh:
        fh.seek((page - 1) * size)
        fh.write(os.urandom(size))
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT max(id) FROM events").fetchone()[0] > 0


@pytest.mark.parametrize(("damage", "all_kept"), [(cut_short, False), (overwrite_a_page, True)])
def test_damaged_events_db_is_moved_aside_and_its_readable_events_kept(
    daemon: DaemonProc, services: Services, damage: Callable[[Path], None], all_kept: bool
) -> None:
    setup_workloads(daemon, services)
    first_run(daemon)
    db = daemon.status_dir / "events.db"
    assert db.stat().st_size >= 4 * 4096
    with contextlib.closing(sqlite3.connect(db)) as conn:
        columns = "id, type, workload, message"
        original = conn.execute(f"SELECT {columns} FROM events ORDER BY id").fetchall()
    damage(db)
    cut = db.read_bytes()
    since = len(daemon.log())
    daemon.start()
    events = committed_events(daemon, starts=2)  # the first run's is kept
    line = one_line(daemon, "event_journal_unusable", since)
    assert line["level"] == "error"
    assert line["error"].startswith(f"{db}: database")
    [moved] = aside(daemon.status_dir, "events.db")
    assert line["moved_to"] == str(moved)
    assert moved.read_bytes() == cut  # left as it was found
    # What was readable is kept, ids and all; the new run's events come after it.
    salvaged = one_line(daemon, "event_journal_salvaged", since)
    count = int(salvaged["events"])
    kept = [(e["id"], e["type"], e["workload"], e["message"]) for e in events[:count]]
    assert kept == (original if all_kept else original[:count])
    assert count >= 1  # the rows before the damage, at least
    new = events[count:]
    assert new[0]["type"] == "daemon_started"
    assert new[0]["id"] == kept[-1][0] + 1
    assert "event_journal_commit_failed" not in daemon.log()
    assert daemon.terminate() == 0
    for _ in range(START_AGAIN):
        since, errors = start_and_stop(daemon)
        assert [e for e in errors if "beta" not in e] == []


def test_garbage_wal_is_moved_aside_and_the_committed_events_kept(
    daemon: DaemonProc, services: Services
) -> None:
    setup_workloads(daemon, services)
    first_run(daemon)
    db = daemon.status_dir / "events.db"
    wal = daemon.status_dir / "events.db-wal"
    assert not wal.exists()  # a clean stop checkpoints and removes it
    garbage = os.urandom(70_000)
    wal.write_bytes(garbage)
    since = len(daemon.log())
    daemon.start()
    events = committed_events(daemon, starts=2)
    line = one_line(daemon, "event_journal_wal_unusable", since)
    assert line["level"] == "error"
    assert line["path"] == str(wal)
    [moved] = aside(daemon.status_dir, "events.db-wal")
    assert line["moved_to"] == str(moved)
    assert moved.read_bytes() == garbage
    assert aside(daemon.status_dir, "events.db") == []  # the database itself stays
    assert db.exists()
    # The first run's events are all still there, the new run's follow them.
    types = [e["type"] for e in events]
    assert types[0] == "daemon_started"
    assert types.count("daemon_started") == 2
    assert types.index("daemon_stopping") < len(types) - 1
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert daemon.terminate() == 0
    for _ in range(START_AGAIN):
        since, errors = start_and_stop(daemon)
        assert daemon.events("event_journal_wal_unusable", since) == []
        assert [e for e in errors if "beta" not in e] == []
