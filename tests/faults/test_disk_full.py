"""The status dir's disk fills up while the daemon runs (a small tmpfs, filled to the last
byte): monitoring goes on, every write is tried again, the problem is logged once and shown in
/v1/status and /metrics, and once space is free statuses.json catches up and events.db gets
every event published meanwhile, which the sinks then deliver. Nothing is lost."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.harness import (
    ApiClient,
    DaemonProc,
    connect,
    deliveries,
    free_port,
    wait_for,
    write,
)

SINK = "notify"


@pytest.fixture
def small_disk(daemon: DaemonProc, require_binary: Callable[[str], str]) -> Iterator[Path]:
    """The daemon's status dir on a tmpfs of 1 MiB; unmounted (lazily if still busy) after."""
    mount = require_binary("mount")
    umount = require_binary("umount")
    daemon.status_dir.mkdir()
    subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(daemon.status_dir)],
        check=True,
        timeout=10,
    )
    try:
        yield daemon.status_dir
    finally:
        daemon.kill()  # nothing may hold the mount when it goes
        done = subprocess.run([umount, str(daemon.status_dir)], check=False, timeout=10)
        if done.returncode != 0:
            subprocess.run([umount, "-l", str(daemon.status_dir)], check=True, timeout=10)


def fill(directory: Path) -> Path:
    """A file that takes every byte left on the file system of ``directory``."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    stats = os.statvfs(directory)
    assert stats.f_bavail == 0, "the disk is not full"
    return filler


def storage(client: ApiClient) -> dict[str, Any]:
    body: dict[str, dict[str, Any]] = client.get("/v1/status")
    return body["storage"]


def storage_file(client: ApiClient, name: str) -> dict[str, Any]:
    files: list[dict[str, Any]] = storage(client)["files"]
    [entry] = [f for f in files if f["file"] == name]
    return entry


def metric(client: ApiClient, line_start: str) -> float:
    reply = client.call("GET", "/metrics")
    assert reply.status == 200
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in reply.text.splitlines()
        if line.startswith(line_start + " ")
    ]
    assert len(values) == 1, (line_start, reply.text)
    return values[0]


def flapper_with_a_sink(daemon: DaemonProc, tmp_path: Path) -> tuple[Path, Path]:
    """A workload that fails while its flag exists, and a command sink appending each
    unhealthy and healthy event to a file (both outside the small disk): (flag, file)."""
    out = tmp_path / "delivered.jsonl"
    notify = tmp_path / "notify"
    notify.write_text(f'#!/bin/sh\ncat >> "{out}"\n')
    notify.chmod(0o755)
    sink = {"name": SINK, "type": "command", "command": [str(notify)]}
    sink["events"] = ["unhealthy", "healthy"]
    daemon.daemon_config.write_text(yaml.safe_dump({"sinks": [sink]}))
    flag = tmp_path / "job.broken"
    write(daemon, "job", "exec", target=f"test ! -e {flag}", retries=1)
    return flag, out


def flap(client: ApiClient, flag: Path) -> None:
    flag.touch()
    client.wait_status("job", lambda s: s["state"] == "unhealthy")
    flag.unlink()
    client.wait_status("job", lambda s: s["state"] == "healthy")


def test_disk_full_while_saving_loses_nothing(
    daemon: DaemonProc, small_disk: Path, tmp_path: Path
) -> None:
    flag, out = flapper_with_a_sink(daemon, tmp_path)
    daemon.start()
    client = connect(daemon)
    client.wait_status("job", lambda s: s["state"] == "healthy")
    assert storage(client)["ok"] is True
    since = len(daemon.log())
    before = wait_for("daemon_started committed", lambda: client.get("/v1/events")["events"])[-1][
        "id"
    ]

    filler = fill(small_disk)
    flap(client, flag)  # the workload breaks and recovers while nothing can be written
    journal = wait_for(
        "three failed commits of events.db",
        lambda: (f := storage_file(client, "events.db"))["failed_writes"] >= 3 and f,
        detail=daemon.log,
    )
    statuses = wait_for(
        "two failed saves of statuses.json",
        lambda: (f := storage_file(client, "statuses.json"))["failed_writes"] >= 2 and f,
        timeout=20,
        detail=daemon.log,
    )
    # Monitoring goes on: the checks are still counted (live, through the API).
    checked = client.get("/v1/status/job")["total_checks"]
    client.wait_status("job", lambda s: s["total_checks"] >= checked + 3)

    assert storage(client)["ok"] is False
    assert statuses["ok"] is False
    assert statuses["error"] == "No space left on device (errno 28)"
    assert statuses["failing_since"] is not None
    assert journal["ok"] is False
    assert journal["error"] == "database or disk is full"
    unsaved = journal["unsaved_events"]  # unhealthy, healthy and the like: in memory
    assert unsaved >= 2, daemon.log()[since:]
    assert metric(client, 'healthd_storage_ok{file="statuses.json"}') == 0
    assert metric(client, 'healthd_storage_ok{file="events.db"}') == 0
    assert metric(client, 'healthd_storage_write_failures_total{file="events.db"}') >= 3
    assert metric(client, "healthd_events_unsaved") == unsaved
    # Logged once per file for the whole episode, not at every retry.
    saves = daemon.events("status_save_failed", since)
    commits = daemon.events("event_journal_commit_failed", since)
    assert len(saves) == 1, daemon.log()[since:]
    assert len(commits) == 1, daemon.log()[since:]
    assert "level=error" in saves[0]
    assert 'error="No space left on device (errno 28)"' in saves[0]
    assert 'error="database or disk is full"' in commits[0]
    assert deliveries(daemon, SINK) == []  # nothing is delivered that is not on disk
    assert daemon.proc is not None
    assert daemon.proc.poll() is None

    filler.unlink()  # space again
    wait_for("storage ok", lambda: storage(client)["ok"], detail=daemon.log)
    assert len(daemon.events("storage_recovered", since)) == 2
    assert metric(client, 'healthd_storage_ok{file="statuses.json"}') == 1
    assert metric(client, "healthd_events_unsaved") == 0
    # statuses.json caught up with the checks run meanwhile
    seen = client.get("/v1/status/job")["total_checks"]
    saved = wait_for(
        "statuses.json to catch up",
        lambda: (s := daemon.status("job")) and s["total_checks"] >= seen and s,
        timeout=15,
    )
    assert saved["state"] == "healthy"
    # events.db got both events, in order, without a gap, and the sink delivered them
    events = client.get("/v1/events?type=unhealthy,healthy")["events"]
    assert [(e["type"], e["workload"]) for e in events] == [
        ("unhealthy", "job"),
        ("healthy", "job"),
    ]
    everything = client.get("/v1/events?limit=1000")["events"]
    all_ids = [e["id"] for e in everything]
    assert all_ids == list(range(1, len(all_ids) + 1))
    meanwhile = [e for e in everything if e["id"] > before]
    assert len(meanwhile) >= unsaved, meanwhile  # every one held in memory reached the disk

    def delivered_all() -> list[dict[str, Any]] | None:
        found = deliveries(daemon, SINK)
        return found if found and all(r["state"] == "delivered" for r in found) else None

    found = wait_for("both delivered", delivered_all, detail=daemon.log)
    assert [r["event_id"] for r in found] == [e["id"] for e in events]
    delivered = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["id"] for e in delivered] == [e["id"] for e in events]
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.log()
    with contextlib.suppress(FileNotFoundError):
        assert not list(small_disk.glob(".*.tmp")), "no temp file left behind"


def test_a_stop_while_the_disk_is_full_says_what_was_not_saved(
    daemon: DaemonProc, small_disk: Path, tmp_path: Path
) -> None:
    flag, _ = flapper_with_a_sink(daemon, tmp_path)
    daemon.start()
    client = connect(daemon)
    client.wait_status("job", lambda s: s["state"] == "healthy")
    wait_for("daemon_started committed", lambda: client.get("/v1/events")["events"])
    saved_before = (small_disk / "statuses.json").read_bytes()
    filler = fill(small_disk)
    flap(client, flag)
    unsaved = wait_for(
        "events held in memory",
        lambda: storage_file(client, "events.db")["unsaved_events"],
        detail=daemon.log,
    )
    since = len(daemon.log())
    assert daemon.terminate() == 0  # not a traceback at exit
    log = daemon.log()[since:]
    assert "Traceback" not in log
    lost = daemon.events("event_not_saved", since)
    # every event held in memory, and daemon_stopping, each named in the log
    assert len(lost) == unsaved + 1, log
    assert any("type=unhealthy" in line and "workload=job" in line for line in lost)
    assert "type=daemon_stopping" in lost[-1]
    assert len(daemon.events("status_not_saved", since)) == 1, log
    assert daemon.events("daemon_stopped", since)
    # The files on the full disk are what was last saved, whole: the next start reads them.
    assert (small_disk / "statuses.json").read_bytes() == saved_before
    filler.unlink()
    since = len(daemon.log())
    daemon.start()
    client = connect(daemon)
    client.wait_status("job", lambda s: s["state"] == "healthy")
    assert daemon.events("status_file_unusable", since) == []
    assert daemon.events("event_journal_unusable", since) == []
    assert daemon.terminate() == 0


def test_a_start_on_a_full_disk_keeps_the_journal_in_memory_until_the_file_opens(
    daemon: DaemonProc, small_disk: Path, tmp_path: Path
) -> None:
    """SQLite cannot even open events.db on a full disk (its -shm file needs space). That
    once read as a damaged journal: the good file was moved aside, a new one could not be
    created either, and the daemon died with a traceback at every start."""
    flag, out = flapper_with_a_sink(daemon, tmp_path)
    daemon.start()
    client = connect(daemon)
    client.wait_status("job", lambda s: s["state"] == "healthy")
    wait_for("daemon_started committed", lambda: client.get("/v1/events")["events"])
    assert daemon.terminate() == 0
    db = small_disk / "events.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        before = conn.execute("SELECT id, type FROM events ORDER BY id").fetchall()
    filler = fill(small_disk)

    port = free_port()
    since = len(daemon.log())
    daemon.start("--listen", f"127.0.0.1:{port}")  # daemon.json cannot be written to say it
    client = ApiClient(f"http://127.0.0.1:{port}")
    wait_for("the API", lambda: _answers(client), detail=lambda: daemon.log()[since:])
    client.wait_status("job", lambda s: s["state"] == "healthy")
    journal = storage_file(client, "events.db")
    assert journal["ok"] is False
    assert journal["in_memory_only"] is True
    assert journal["error"]
    lines = daemon.events("event_journal_commit_failed", since)
    assert len(lines) == 1
    assert "events are kept in memory" in lines[0]
    assert daemon.events("event_journal_unusable", since) == []
    assert list(small_disk.glob("events.db.corrupt-*")) == []
    flap(client, flag)  # alerts still go out: committed in memory, then delivered

    def both() -> list[dict[str, Any]] | None:
        found = out.read_text().splitlines() if out.exists() else []
        return [json.loads(line) for line in found] if len(found) == 2 else None

    delivered = wait_for("both delivered", both, detail=lambda: daemon.log()[since:])
    assert [e["type"] for e in delivered] == ["unhealthy", "healthy"]
    assert delivered[0]["id"] > before[-1][0]  # ids go on after the file's
    in_memory = client.get("/v1/events?limit=1000")["events"]
    assert in_memory[0]["id"] > before[-1][0]  # what the API shows: this run's, in memory

    filler.unlink()  # space again, the daemon still running: the journal moves to the file
    wait_for("events.db opened", lambda: storage_file(client, "events.db")["ok"])
    assert storage_file(client, "events.db")["in_memory_only"] is False
    [moved] = daemon.events("event_journal_on_disk", since)
    assert f"events={len(in_memory)}" in moved.split()
    assert len(daemon.events("event_journal_commit_failed", since)) == 1  # once, all along
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        on_disk = conn.execute("SELECT id, type FROM events ORDER BY id").fetchall()
    assert on_disk[: len(before)] == before  # the file's own, untouched
    assert on_disk[len(before) :][: len(in_memory)] == [(e["id"], e["type"]) for e in in_memory]
    rows = deliveries(daemon, SINK)
    assert [(r["event_id"], r["state"]) for r in rows] == [
        (e["id"], "delivered") for e in delivered
    ]
    flap(client, flag)  # and the journal goes on in the file
    wait_for(
        "four delivered",
        lambda: [r["state"] for r in deliveries(daemon, SINK)] == ["delivered"] * 4,
        detail=lambda: daemon.log()[since:],
    )
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.log()[since:]
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == [
        "unhealthy",
        "healthy",
    ] * 2


def test_a_run_on_a_full_disk_from_start_to_stop_says_its_events_were_not_saved(
    daemon: DaemonProc, small_disk: Path, tmp_path: Path
) -> None:
    flag, out = flapper_with_a_sink(daemon, tmp_path)
    filler = fill(small_disk)  # before the first start: not even statuses.json exists
    port = free_port()
    daemon.start("--listen", f"127.0.0.1:{port}")
    client = ApiClient(f"http://127.0.0.1:{port}")
    wait_for("the API", lambda: _answers(client), detail=daemon.log)
    client.wait_status("job", lambda s: s["state"] == "healthy")
    flap(client, flag)
    wait_for("both delivered", lambda: out.exists() and len(out.read_text().splitlines()) == 2)
    kept = len(client.get("/v1/events?limit=1000")["events"])
    assert storage(client)["ok"] is False
    assert daemon.terminate() == 0
    [line] = daemon.events("event_journal_not_saved")
    assert "level=error" in line
    assert f"events={kept + 1}" in line.split()  # and daemon_stopping
    assert "Traceback" not in daemon.log()
    # nothing half-written: an empty events.db (SQLite's open creates it), no temp file
    sizes = {p.name: p.stat().st_size for p in small_disk.iterdir() if p.name != "filler"}
    assert sizes == {"events.db": 0}
    filler.unlink()


def _answers(client: ApiClient) -> bool:
    try:
        return client.call("GET", "/healthz").status == 200
    except OSError:
        return False
