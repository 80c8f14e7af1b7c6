"""The Dispatcher on a real events.db (a tmp_path journal) with an in-test sink whose outcomes
are scripted per event and attempt: order, backoff, permanent failures, expiry, noise control,
the per-attempt deadline, and a journal that fails for a while."""

from __future__ import annotations

import asyncio
import io
import itertools
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from healthd.config.daemon_file import EventsSettings
from healthd.config.sinks import SinkSettings
from healthd.engine.scheduler import SystemUniform
from healthd.logs import make_logger
from healthd.model import Event, EventType
from healthd.sinks import DeliveryError, dispatch
from healthd.sinks.dispatch import Dispatcher, backoff
from healthd.sinks.notifier import Notifier
from healthd.store import journal_commit, journal_outbox
from healthd.store.journal import Journal, Route

OK, TRANSIENT, PERMANENT, HANG = "ok", "transient", "permanent", "hang"
# (event id, attempt number for that event, from 1) -> what the sink does
Plan = Callable[[int, int], str]


def always_ok(_event_id: int, _attempt: int) -> str:
    return OK


@dataclass
class ScriptedSink:
    """A sink that does what ``plan`` says and records every attempt."""

    settings: SinkSettings
    plan: Plan = always_ok
    attempts: list[tuple[int, float]] = field(default_factory=list)  # (event id, monotonic)
    delivered: list[tuple[int, bool]] = field(default_factory=list)  # (event id, reminder)
    cut: list[int] = field(default_factory=list)  # event ids whose attempt was cancelled

    async def deliver(self, event: Event, *, reminder: bool) -> None:
        self.attempts.append((event.id, time.monotonic()))
        step = self.plan(event.id, sum(1 for e, _ in self.attempts if e == event.id))
        if step == TRANSIENT:
            raise DeliveryError("HTTP 503 Service Unavailable")
        if step == PERMANENT:
            raise DeliveryError("HTTP 400 Bad Request: no such team", permanent=True)
        if step == HANG:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cut.append(event.id)
                raise
        self.delivered.append((event.id, reminder))

    async def maintain(self) -> None:
        return

    async def close(self) -> None:
        return


class RecordingUniform:
    """random.Random's uniform, seeded, remembering each (low, high, drawn)."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.draws: list[tuple[float, float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        value = self.rng.uniform(a, b)
        self.draws.append((a, b, value))
        return value


@dataclass
class Setup:
    journal: Journal
    dispatcher: Dispatcher
    sink: ScriptedSink
    db: Path
    log: io.StringIO

    def publish(
        self,
        kind: EventType = EventType.UNHEALTHY,
        workload: str = "web",
        at: datetime | None = None,
    ) -> int:
        event = Event(kind, workload, at or datetime.now(UTC), f"{workload} {kind}")
        return self.journal.append(event).id

    def rows(self) -> list[dict[str, Any]]:
        """The deliveries table as it is on disk (a separate read-only connection)."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM deliveries ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def states(self) -> list[tuple[int, str]]:
        return [(r["event_id"], r["state"]) for r in self.rows()]


async def until(what: str, probe: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries 20 times sooner than in production: the same doubling, in tenths of a second."""
    monkeypatch.setattr(dispatch, "FIRST_RETRY", 0.05)
    monkeypatch.setattr(dispatch, "RESUME_AFTER", 0.05)


@asynccontextmanager
async def dispatching(
    tmp_path: Path, plan: Plan = always_ok, rng: RecordingUniform | None = None, **settings: Any
) -> AsyncIterator[Setup]:
    """A journal on tmp_path/events.db with one sink ``s`` wanting every event, and its
    dispatcher running."""
    sink = ScriptedSink(SinkSettings(name="s", type="command", **settings), plan)
    out = io.StringIO()
    log = make_logger(out)
    db = tmp_path / "events.db"
    journal = Journal(db, host="node1")
    journal.open()
    journal.routes.append(Route("s", lambda _e: True))
    dispatcher = Dispatcher(sink, journal, log, rng or RecordingUniform())
    journal.on_commit(lambda _batch: dispatcher.wake.set())
    tasks = [asyncio.create_task(journal.run()), asyncio.create_task(dispatcher.run())]
    try:
        yield Setup(journal, dispatcher, sink, db, out)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        journal.close()


def delivered_ids(setup: Setup) -> list[int]:
    return delivered_ids_of(setup.sink)


async def test_order_is_kept_across_a_transient_failure(tmp_path: Path) -> None:
    def plan(event_id: int, attempt: int) -> str:
        return TRANSIENT if event_id == 2 and attempt <= 2 else OK

    async with dispatching(tmp_path, plan) as s:
        ids = [s.publish(workload=f"w{i}") for i in range(5)]
        await until("all five delivered", lambda: len(s.sink.delivered) == 5)
        assert delivered_ids(s) == ids
        # the events after 2 waited for it: nothing of 3..5 was tried before 2 went through
        assert [e for e, _ in s.sink.attempts] == [1, 2, 2, 2, 3, 4, 5]
        # An outcome is counted once its settle has been written, a moment after the row
        # shows as settled to another reader: wait for the count, then every row is settled.
        await until("five outcomes counted", lambda: s.dispatcher.outcomes["delivered"] == 5)
        assert all(r["state"] == "delivered" for r in s.rows())
        assert [r["attempts"] for r in s.rows()] == [1, 3, 1, 1, 1]
        assert s.dispatcher.retries == 2
        assert "event=delivery_retry" in s.log.getvalue()


async def test_retries_back_off_exponentially_with_jitter(tmp_path: Path) -> None:
    def plan(event_id: int, attempt: int) -> str:
        return TRANSIENT if attempt <= 4 else OK

    rng = RecordingUniform()
    async with dispatching(tmp_path, plan, rng) as s:
        s.publish()
        await until("delivered after four failures", lambda: len(s.sink.delivered) == 1)
    times = [t for _, t in s.sink.attempts]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # each retry's window doubles from FIRST_RETRY, and the wait drawn from [half, full]
    assert [(low, high) for low, high, _ in rng.draws] == [
        (0.025, 0.05),
        (0.05, 0.1),
        (0.1, 0.2),
        (0.2, 0.4),
    ]
    for gap, (_low, high, drawn) in zip(gaps, rng.draws, strict=True):
        assert drawn - 0.005 <= gap <= high + 0.15, (gaps, rng.draws)
    assert gaps[3] > gaps[0]


def test_backoff_doubles_from_one_second_to_five_minutes_and_never_overflows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "FIRST_RETRY", 1.0)  # production's, not this file's
    rng = RecordingUniform()
    expected = {1: 1.0, 2: 2.0, 3: 4.0, 9: 256.0, 10: 300.0, 50: 300.0, 1100: 300.0, 10**6: 300.0}
    for attempts, full in expected.items():
        wait = backoff(attempts, rng)  # 1100 doublings would not fit a float
        assert rng.draws[-1][:2] == (full / 2, full)
        assert full / 2 <= wait <= full
    system = SystemUniform()
    samples = [backoff(3, system) for _ in range(2000)]
    assert all(2.0 <= x <= 4.0 for x in samples)
    assert max(samples) - min(samples) > 1.5  # jittered across the window, not one value


async def test_a_permanent_failure_is_recorded_and_the_next_event_goes(tmp_path: Path) -> None:
    def plan(event_id: int, attempt: int) -> str:
        return PERMANENT if event_id == 1 else OK

    async with dispatching(tmp_path, plan) as s:
        s.publish()
        s.publish(EventType.HEALTHY)
        await until("the second delivered", lambda: delivered_ids(s) == [2])
        await until("both settled", lambda: "pending" not in {r["state"] for r in s.rows()})
        first, second = s.rows()
        assert (first["state"], first["attempts"]) == ("failed", 1)
        assert first["last_error"] == "HTTP 400 Bad Request: no such team"
        assert second["state"] == "delivered"
        assert [e for e, _ in s.sink.attempts] == [1, 2]  # not retried
        assert s.dispatcher.outcomes["failed"] == 1
        assert "event=delivery_failed" in s.log.getvalue()


async def test_a_delivery_older_than_max_age_expires_visibly(tmp_path: Path) -> None:
    def plan(event_id: int, attempt: int) -> str:
        return TRANSIENT if event_id == 1 else OK

    async with dispatching(tmp_path, plan, max_age=0.4) as s:
        s.publish()
        await until("the first expired", lambda: s.states() == [(1, "expired")])
        tries = len(s.sink.attempts)
        assert tries >= 2  # retried until then
        s.publish(EventType.HEALTHY)
        await until("the next delivered", lambda: delivered_ids(s) == [2])
        assert len(s.sink.attempts) == tries + 1  # the expired one was not tried again
        row = s.rows()[0]
        # why it never went
        assert row["last_error"].startswith("expired after ")
        assert row["last_error"].endswith("in 400ms; last error: HTTP 503 Service Unavailable")
        assert s.dispatcher.outcomes["expired"] == 1
        assert "event=event_expired" in s.log.getvalue()


async def test_min_interval_suppresses_repeats_by_when_they_happened(tmp_path: Path) -> None:
    t0 = datetime.now(UTC)
    async with dispatching(tmp_path, min_interval=60.0) as s:
        s.publish(EventType.UNHEALTHY, "web", t0)
        s.publish(EventType.UNHEALTHY, "web", t0 + timedelta(seconds=30))  # noise
        s.publish(EventType.UNHEALTHY, "db", t0 + timedelta(seconds=31))  # other workload
        s.publish(EventType.HEALTHY, "web", t0 + timedelta(seconds=32))  # other type
        s.publish(EventType.UNHEALTHY, "web", t0 + timedelta(seconds=61))  # a minute on
        await until("all settled", lambda: len(s.rows()) == 5 and "pending" not in str(s.rows()))
        assert s.states() == [
            (1, "delivered"),
            (2, "suppressed"),
            (3, "delivered"),
            (4, "delivered"),
            (5, "delivered"),
        ]
        assert delivered_ids(s) == [1, 3, 4, 5]
        assert s.dispatcher.outcomes["suppressed"] == 1


async def test_a_reminder_is_never_suppressed(tmp_path: Path) -> None:
    async with dispatching(tmp_path, min_interval=3600.0) as s:
        first = s.publish()
        await until("delivered", lambda: delivered_ids(s) == [first])
        await s.journal.call(s.journal.add_reminder, "s", first)
        s.dispatcher.wake.set()
        await until("reminded", lambda: len(s.sink.delivered) == 2)
        assert s.sink.delivered == [(first, False), (first, True)]
        assert [r["reminder"] for r in s.rows()] == [0, 1]


class ClockSetBackAfter:
    """The ``time`` module as a module sees it that wrote its rows an hour ahead of now: the
    wall clock was set back an hour just after."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return time.time() + 3600


async def test_a_wall_clock_set_back_does_not_hold_new_deliveries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events and a reminder written just before the clock went back an hour are due at once,
    not after a backoff (nor an hour): each was written to go when it was written."""
    monkeypatch.setattr(journal_commit, "time", ClockSetBackAfter())
    monkeypatch.setattr(journal_outbox, "time", ClockSetBackAfter())
    async with dispatching(tmp_path) as s:
        started = time.monotonic()
        first, second = s.publish(), s.publish(EventType.HEALTHY)
        await until("both delivered", lambda: delivered_ids(s) == [first, second], timeout=3.0)
        assert all(r["next_at"] > time.time() + 3000 for r in s.rows())
        await s.journal.call(s.journal.add_reminder, "s", first)
        s.dispatcher.wake.set()
        await until("reminded", lambda: len(s.sink.delivered) == 3, timeout=3.0)
        assert time.monotonic() - started < 3.0


async def test_a_delivery_cut_by_the_deadline_is_retried(tmp_path: Path) -> None:
    def plan(event_id: int, attempt: int) -> str:
        return HANG if attempt == 1 else OK

    async with dispatching(tmp_path, plan, timeout=0.2) as s:
        started = time.monotonic()
        s.publish()
        s.publish(EventType.HEALTHY)
        await until("both delivered", lambda: len(s.sink.delivered) == 2)
        assert delivered_ids(s) == [1, 2]
        assert s.sink.cut == [1, 2]  # each first attempt was cancelled at its deadline
        assert time.monotonic() - started < 2.0
        await until("settled", lambda: [r["state"] for r in s.rows()] == ["delivered"] * 2)
        assert [r["attempts"] for r in s.rows()] == [2, 2]
        assert "no answer within 200ms" in s.log.getvalue()


async def test_the_dispatcher_outlives_a_journal_error(tmp_path: Path) -> None:
    async with dispatching(tmp_path) as s:
        s.publish()
        await until("the first delivered", lambda: delivered_ids(s) == [1])
        s.journal.close()  # every query now fails, as on a broken disk
        s.dispatcher.wake.set()
        await until("the error logged", lambda: "event=sink_dispatch_error" in s.log.getvalue())
        s.journal.open()
        s.publish(EventType.HEALTHY)
        await until("delivering again", lambda: delivered_ids(s) == [1, 2])


async def test_commits_outlive_a_journal_error(tmp_path: Path) -> None:
    """The notifier keeps committing after a failed commit; the failed batch is not lost."""
    out = io.StringIO()
    journal = Journal(tmp_path / "events.db", host="node1", log=make_logger(out))
    journal.retry_interval = 0.05
    notifier = Notifier(journal, EventsSettings(), make_logger(out))
    sink = ScriptedSink(SinkSettings(name="s", type="command"))
    notifier.add_sink(sink)
    notifier.open()
    await notifier.start(dict)
    try:
        first = journal.append(Event(EventType.UNHEALTHY, "web", datetime.now(UTC), "down")).id
        await until("the first delivered", lambda: delivered_ids_of(sink) == [first])
        journal.close()  # the next commit fails, as on a broken disk
        second = journal.append(Event(EventType.HEALTHY, "web", datetime.now(UTC), "up")).id
        await until("the failure logged", lambda: "event_journal_commit_failed" in out.getvalue())
        assert journal.committed_id == first
        journal.open()
        await until("the second delivered", lambda: delivered_ids_of(sink) == [first, second])
        assert journal.committed_id == second
    finally:
        await notifier.stop()


def delivered_ids_of(sink: ScriptedSink) -> list[int]:
    return [event_id for event_id, _ in sink.delivered]
