"""events.db (``Journal``) on a real SQLite file: ids, batched commits with their deliveries in
the same transaction, the outbox's order and states, retention, reopening, a broken file, and
the read-only access ``healthd events`` uses beside a running writer."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from healthd.model import Event, EventType, State
from healthd.store.journal import (
    DELIVERED,
    EXPIRED,
    FAILED,
    FILENAME,
    SUPPRESSED,
    Journal,
    JournalError,
    Route,
    event_json,
)

T0 = datetime(2026, 11, 28, 3, 2, 47, 123456, tzinfo=UTC)


def event(kind: EventType = EventType.UNHEALTHY, workload: str = "web", at: datetime = T0) -> Event:
    return Event(kind, workload, at, f"{kind.value} {workload}", details={"n": 1})


def everything(_: Event) -> bool:
    return True


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "status" / FILENAME


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    j = Journal(path, host="node-1")
    j.open()
    yield j
    j.close()


def commit(journal: Journal, *events: Event) -> list[Event]:
    stamped = [journal.append(e) for e in events]
    journal.flush_sync()
    return stamped


def test_append_gives_increasing_ids_and_the_host(journal: Journal) -> None:
    stamped = [journal.append(event(workload=f"w{n}")) for n in range(3)]
    assert [e.id for e in stamped] == [1, 2, 3]
    assert {e.host for e in stamped} == {"node-1"}
    assert journal.committed_id == 0  # queued, not on disk yet
    assert journal.events() == []


async def test_run_commits_a_burst_as_one_batch_and_tells_listeners(journal: Journal) -> None:
    batches: list[list[int]] = []
    committed = asyncio.Event()

    def listener(batch: list[Event]) -> None:
        batches.append([e.id for e in batch])
        committed.set()

    journal.on_commit(listener)
    runner = asyncio.get_running_loop().create_task(journal.run(batch_window=0.05))
    try:
        for n in range(5):
            journal.append(event(workload=f"w{n}"))
        async with asyncio.timeout(5):
            await committed.wait()
        assert journal.committed_id == 5
        committed.clear()
        journal.append(event(workload="late"))
        async with asyncio.timeout(5):
            await committed.wait()
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert batches == [[1, 2, 3, 4, 5], [6]]
    assert journal.committed_id == 6
    assert [e.workload for e in journal.events()] == ["w0", "w1", "w2", "w3", "w4", "late"]


def test_an_event_reads_back_as_it_was_published(journal: Journal) -> None:
    published = Event(
        EventType.RESTART_FAILED,
        "db",
        T0,
        "restart failed",
        state_from=State.UNHEALTHY,
        state_to=State.RESTARTING,
        details={"attempt": 2, "error": "exit 1"},
    )
    (stamped,) = commit(journal, published)
    (back,) = journal.events()
    assert back == stamped
    assert event_json(back) == {
        "id": 1,
        "type": "restart_failed",
        "workload": "db",
        "timestamp": "2026-11-28T03:02:47.123456Z",
        "message": "restart failed",
        "host": "node-1",
        "state_from": "unhealthy",
        "state_to": "restarting",
        "details": {"attempt": 2, "error": "exit 1"},
    }


def test_off_commit_stops_a_listener(journal: Journal) -> None:
    seen: list[int] = []

    def listener(batch: list[Event]) -> None:
        seen.extend(e.id for e in batch)

    journal.on_commit(listener)
    commit(journal, event())
    journal.off_commit(listener)
    journal.off_commit(listener)  # twice is harmless
    commit(journal, event())
    assert seen == [1]


def test_routes_create_a_pending_delivery_for_each_sink_that_wants_the_event(
    journal: Journal,
) -> None:
    journal.routes.append(Route("all", everything))
    journal.routes.append(Route("db-only", lambda e: e.workload == "db"))
    commit(journal, event(workload="web"), event(workload="db"))
    assert [d.event.workload for d in journal.due("all")] == ["web", "db"]
    assert [d.event.workload for d in journal.due("db-only")] == ["db"]
    assert journal.due("nobody") == []
    counts = journal.counts()
    assert (counts["all"].pending, counts["db-only"].pending) == (2, 1)


def test_due_is_in_event_order_limited_and_skips_settled_ones(journal: Journal) -> None:
    journal.routes.append(Route("s", everything))
    commit(journal, *(event(workload=f"w{n}") for n in range(5)))
    due = journal.due("s")
    assert [d.event.id for d in due] == [1, 2, 3, 4, 5]
    assert [d.attempts for d in due] == [0] * 5
    assert not any(d.reminder for d in due)
    assert [d.event.id for d in journal.due("s", limit=2)] == [1, 2]
    journal.settle(due[0].id, DELIVERED, 1)
    journal.settle(due[2].id, FAILED, 1, "HTTP 400")
    assert [d.event.id for d in journal.due("s")] == [2, 4, 5]


def test_retry_later_keeps_it_pending_with_its_attempts_and_time(journal: Journal) -> None:
    journal.routes.append(Route("s", everything))
    commit(journal, event())
    (first,) = journal.due("s")
    later = time.time() + 60
    journal.retry_later(first.id, 1, later, "connection refused")
    (again,) = journal.due("s")
    assert (again.id, again.attempts, again.next_at) == (first.id, 1, later)
    counts = journal.counts()["s"]
    assert (counts.pending, counts.last_error) == (1, "connection refused")


def test_a_reminder_is_a_new_pending_delivery_of_the_same_event(journal: Journal) -> None:
    journal.routes.append(Route("s", everything))
    (stamped,) = commit(journal, event())
    (first,) = journal.due("s")
    journal.settle(first.id, DELIVERED, 1)
    journal.add_reminder("s", stamped.id)
    (reminder,) = journal.due("s")
    assert reminder.reminder
    assert reminder.event == stamped


def test_counts_per_sink_and_state_with_last_error_and_last_delivered(journal: Journal) -> None:
    journal.routes.append(Route("a", everything))
    journal.routes.append(Route("b", everything))
    commit(journal, *(event(workload=f"w{n}") for n in range(5)))
    a = journal.due("a")
    before = time.time()
    journal.settle(a[0].id, DELIVERED, 1)
    journal.settle(a[1].id, FAILED, 1, "HTTP 404")
    journal.settle(a[2].id, EXPIRED, 7, "expired after 7 attempt(s)")
    journal.settle(a[3].id, SUPPRESSED, 0)
    counts = journal.counts()
    got = counts["a"]
    assert (got.pending, got.delivered, got.failed, got.expired, got.suppressed) == (1, 1, 1, 1, 1)
    assert got.last_error == "expired after 7 attempt(s)"  # the newest delivery with an error
    assert got.last_delivered is not None
    assert before <= got.last_delivered <= time.time()
    b = counts["b"]
    assert (b.pending, b.delivered, b.last_error, b.last_delivered) == (5, 0, "", None)


def test_events_filters_by_workload_type_time_and_pages_by_id(journal: Journal) -> None:
    commit(
        journal,
        event(EventType.UNHEALTHY, "web", T0),
        event(EventType.HEALTHY, "web", T0 + timedelta(minutes=1)),
        event(EventType.UNHEALTHY, "db", T0 + timedelta(minutes=2)),
        event(EventType.DAEMON_STARTED, "", T0 + timedelta(minutes=3)),
    )
    ids = [e.id for e in journal.events()]
    assert ids == [1, 2, 3, 4]
    assert [e.id for e in journal.events(workload="web")] == [1, 2]
    assert [e.id for e in journal.events(workload="")] == [4]
    assert [e.id for e in journal.events(types=["unhealthy"])] == [1, 3]
    assert [e.id for e in journal.events(types=["healthy", "daemon_started"])] == [2, 4]
    since = (T0 + timedelta(minutes=2)).timestamp()
    assert [e.id for e in journal.events(since=since)] == [3, 4]
    assert [e.id for e in journal.events(after_id=1, limit=2)] == [2, 3]
    assert [e.id for e in journal.events(limit=2, newest=True)] == [3, 4]
    assert journal.last_event_of("web", ["unhealthy"]) == journal.events(after_id=0, limit=1)[0]
    assert journal.last_event_of("nobody", ["unhealthy"]) is None


def test_prune_removes_old_and_surplus_events_but_never_one_still_pending(
    journal: Journal,
) -> None:
    journal.routes.append(Route("s", everything))
    old = T0 - timedelta(days=30)
    commit(journal, event(workload="old-pending", at=old), event(workload="old-done", at=old))
    now = datetime.now(UTC)
    commit(journal, *(event(workload=f"new{n}", at=now) for n in range(4)))
    due = journal.due("s")
    for d in due[1:]:  # all but the first (old-pending) settled
        journal.settle(d.id, DELIVERED, 1)
    gone = journal.prune(max_age=86400, max_count=3)
    # old-done by age, new0 beyond the newest 3; old-pending stays while pending
    assert gone == 2
    assert [e.workload for e in journal.events()] == ["old-pending", "new1", "new2", "new3"]
    assert [d.event.workload for d in journal.due("s")] == ["old-pending"]
    assert sum(c.delivered for c in journal.counts().values()) == 3  # its deliveries went too


def test_reopening_continues_the_ids_after_the_last_committed(path: Path) -> None:
    first = Journal(path, host="h")
    first.open()
    commit(first, event(), event())
    first.append(event())  # never committed: its id is not on disk, so it is given again
    first.close()
    second = Journal(path, host="h")
    second.open()
    try:
        assert second.committed_id == 2
        assert second.append(event()).id == 3
        second.flush_sync()
        assert [e.id for e in second.events()] == [1, 2, 3]
    finally:
        second.close()


def test_a_file_that_is_not_a_database_raises_journal_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not SQLite, " * 500)
    journal = Journal(path, host="h")
    with pytest.raises(JournalError, match=str(path)):
        journal.open()
    with pytest.raises(JournalError, match="not open"):
        journal.events()


def test_a_database_from_a_newer_healthd_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(JournalError, match="newer healthd"):
        Journal(path, host="h").open()


def test_quarantine_moves_the_database_and_its_wal_aside(path: Path) -> None:
    journal = Journal(path, host="h")
    journal.open()
    commit(journal, event())
    wal = path.with_name(FILENAME + "-wal")
    assert wal.exists()  # still open: the WAL holds the commit
    aside = journal.quarantine()
    journal.close()
    assert not path.exists()
    assert not wal.exists()
    assert aside.name.startswith(f"{FILENAME}.corrupt-")
    assert aside.with_name(aside.name + "-wal").exists()
    # What was moved aside is whole: the event is there, for a human to look at.
    with sqlite3.connect(aside) as db:
        assert db.execute("SELECT workload FROM events").fetchall() == [("web",)]
    db.close()


def test_read_only_access_reads_beside_a_writer_and_never_writes(path: Path) -> None:
    writer = Journal(path, host="h")
    writer.open()
    reader = Journal(path, host="")
    try:
        commit(writer, event(workload="a"))
        reader.open_readonly()
        assert reader.committed_id == 1
        commit(writer, event(workload="b"))  # not blocked by the reader
        assert [e.workload for e in reader.events()] == ["a", "b"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._connection().execute("DELETE FROM events")
    finally:
        reader.close()
        writer.close()


def test_read_only_access_needs_an_existing_journal(path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Journal(path, host="").open_readonly()
    assert not path.exists()  # nothing created
    assert not path.parent.exists()


def test_pending_counts_agree_with_counts(journal: Journal) -> None:
    journal.routes.append(Route("a", everything))
    journal.routes.append(Route("b", lambda e: e.workload == "db"))
    commit(journal, event(workload="web"), event(workload="db"), event(workload="db"))
    journal.settle(journal.due("a")[0].id, DELIVERED, 1)
    journal.settle(journal.due("b")[0].id, FAILED, 1, "HTTP 400")
    assert journal.pending_counts() == {"a": 2, "b": 1}
    assert {sink: c.pending for sink, c in journal.counts().items()} == {"a": 2, "b": 1}
    for d in journal.due("b"):
        journal.settle(d.id, DELIVERED, 1)
    assert journal.pending_counts() == {"a": 2}  # a sink with none pending is not listed


def test_pending_deliveries_of_a_sink_no_longer_configured_are_expired_visibly(
    journal: Journal,
) -> None:
    journal.routes += [Route("kept", everything), Route("removed", everything)]
    commit(journal, event(), event(EventType.HEALTHY))
    assert journal.abandon_other_sinks(["kept"]) == {"removed": 2}
    counts = journal.counts()
    assert (counts["kept"].pending, counts["removed"].pending) == (2, 0)
    assert counts["removed"].expired == 2
    assert counts["removed"].last_error == "the sink is no longer configured"
    assert journal.abandon_other_sinks([]) == {"kept": 2}  # no sink at all: none is kept


async def test_a_flush_cancelled_while_its_commit_runs_neither_loses_nor_repeats_it(
    journal: Journal,
) -> None:
    for n in range(2000):
        journal.append(event(workload=f"w{n}"))
    flushing = asyncio.ensure_future(journal.flush())
    await asyncio.sleep(0.001)  # the commit is running in its thread now
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    journal.append(event(workload="after"))
    journal.flush_sync()  # a re-queued batch would collide with itself here
    ids = [e.id for e in journal.events(limit=5000)]
    assert ids == list(range(1, 2002))


def test_a_listener_that_raises_does_not_stop_the_commits(path: Path) -> None:
    import io

    from healthd.logs import make_logger

    out = io.StringIO()
    j = Journal(path, host="node-1", log=make_logger(out))
    j.open()
    seen: list[int] = []

    def broken(_: list[Event]) -> None:
        raise RuntimeError("listener bug")

    j.on_commit(broken)
    j.on_commit(lambda batch: seen.extend(e.id for e in batch))
    commit(j, event())
    commit(j, event())
    assert seen == [1, 2]
    assert out.getvalue().count("event=event_listener_failed") == 2
    j.close()


def test_text_sqlite_cannot_store_is_escaped_and_blocks_no_commit(journal: Journal) -> None:
    """A non-UTF-8 file name reaches Python as lone surrogates; such an event used to fail
    its commit, and so every commit after it, for ever."""
    odd = Event(EventType.CONFIG_ERROR, "bad-\udcff", T0, "cfg/bad-\udcff.yaml: type: required")
    commit(journal, odd, event(workload="after"))
    found = journal.events()
    assert [(e.workload, e.message) for e in found] == [
        ("bad-\\udcff", "cfg/bad-\\udcff.yaml: type: required"),
        ("after", "unhealthy after"),
    ]


def test_events_held_for_a_refusing_disk_are_bounded_oldest_dropped_first(path: Path) -> None:
    import io

    from healthd.logs import make_logger

    out = io.StringIO()
    j = Journal(path, host="node-1", log=make_logger(out))
    j.open()
    j.max_unsaved = 3
    j.close()  # every commit fails now, as on a disk that refuses them
    stamped = [j.append(event(workload=f"w{n}")) for n in range(5)]
    j.flush_sync()  # fails: they stay queued, each named in the log
    assert (j.unsaved, j.dropped) == (3, 2)
    assert out.getvalue().count("event=events_dropped") == 1
    assert "dropped=1 last_dropped_id=1" in out.getvalue()  # said at the first, once
    assert out.getvalue().count("event=event_not_saved") == 3
    j.open()
    j.flush_sync()
    assert [e.id for e in j.events()] == [e.id for e in stamped[2:]]
    assert j.health.ok is False  # until a commit of the running journal succeeds
    j.close()
