"""events.db: every event, committed before any delivery, and each sink's delivery outbox.

SQLite (stdlib sqlite3) in WAL mode in the status dir, ``synchronous=FULL``: a committed event
survives a crash of the daemon or the host. Events are given their ``id`` when published (one
writer: the daemon), queued, and committed in batches from a thread a few milliseconds later,
with a delivery row for every sink that wants them, in the same transaction. Only then are
they delivered, streamed or shown, so nothing is ever delivered that a crash could take back.

Deliveries move pending -> delivered | failed (permanent) | expired (too old to retry) |
suppressed (noise control); none is ever deleted while pending.

Every method that touches the database blocks: the daemon calls them through ``call``, in a
thread, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from healthd.logs import Logger
from healthd.model import Event, EventType, State
from healthd.store.status import format_time, parse_time

FILENAME = "events.db"
SCHEMA_VERSION = 1
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    unix REAL NOT NULL,
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    workload TEXT NOT NULL,
    host TEXT NOT NULL,
    message TEXT NOT NULL,
    state_from TEXT,
    state_to TEXT,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_workload ON events (workload, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (unix);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    reminder INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    next_at REAL NOT NULL,
    updated REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (sink, state, id);
CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries (event_id);
"""

PENDING, DELIVERED, FAILED, EXPIRED, SUPPRESSED = (
    "pending",
    "delivered",
    "failed",
    "expired",
    "suppressed",
)
OUTCOMES = (DELIVERED, FAILED, EXPIRED, SUPPRESSED)


class JournalError(Exception):
    """events.db cannot be used."""


@dataclass(frozen=True, slots=True)
class Route:
    """A sink's name and which events it wants (its filters)."""

    sink: str
    wants: Callable[[Event], bool]


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    sink: str
    event: Event
    reminder: bool
    attempts: int
    created: float
    next_at: float


@dataclass(frozen=True, slots=True)
class SinkCounts:
    pending: int
    delivered: int
    failed: int
    expired: int
    suppressed: int
    last_error: str
    last_delivered: float | None


def event_json(event: Event) -> dict[str, Any]:
    """The event as sinks, the API and ``healthd events --json`` show it."""
    out: dict[str, Any] = {
        "id": event.id,
        "type": event.type.value,
        "workload": event.workload,
        "timestamp": format_time(event.timestamp),
        "message": event.message,
        "host": event.host,
    }
    if event.state_to is not None:
        out["state_from"] = event.state_from.value if event.state_from else None
        out["state_to"] = event.state_to.value
    out["details"] = event.details
    return out


def _row_event(row: Sequence[Any]) -> Event:
    event_id, _unix, stamp, kind, workload, host, message, state_from, state_to, details = row
    return Event(
        type=EventType(kind),
        workload=workload,
        timestamp=parse_time(stamp) or datetime.fromtimestamp(_unix, UTC),
        message=message,
        state_from=State(state_from) if state_from else None,
        state_to=State(state_to) if state_to else None,
        details=json.loads(details),
        id=event_id,
        host=host,
    )


_EVENT_COLUMNS = "id, unix, time, type, workload, host, message, state_from, state_to, details"


class Journal:
    def __init__(self, path: Path, *, host: str, log: Logger | None = None) -> None:
        self.path = path
        self.host = host
        self.log = log
        self.routes: list[Route] = []
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one statement stream at a time on the one connection
        self._next_id = 1
        self._queued: list[Event] = []
        self._wake = asyncio.Event()
        self._listeners: list[Callable[[list[Event]], None]] = []
        self.committed_id = 0  # the highest id known to be on disk

    # -- opening ----------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) events.db; raises JournalError when it is not a usable database."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: {exc}") from None
        last = self._prepare(db, writable=True)
        self._db = db
        self._next_id = last + 1
        self.committed_id = last

    def open_readonly(self) -> None:
        """Open an existing events.db for reading only (``healthd events``): never created,
        never written (SQLite may add the -wal and -shm files beside it, as for any reader of
        a WAL database), safe beside the daemon writing it: readers do not block it.
        Raises FileNotFoundError when there is none, JournalError when it is unusable."""
        if not self.path.is_file():
            raise FileNotFoundError(self.path)
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: {exc}") from None
        self._db = db
        self.committed_id = self._prepare(db, writable=False)

    def _prepare(self, db: sqlite3.Connection, *, writable: bool) -> int:
        """Check the schema version (and, writing, set up WAL and the schema); the last id.
        Closes ``db`` and raises JournalError when the file cannot be used."""
        try:
            if writable:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                fix = "move it aside or upgrade" if writable else "upgrade"
                raise JournalError(
                    f"{self.path}: written by a newer healthd (schema {version}); {fix}"
                )
            if writable:
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return int(db.execute("SELECT max(id) FROM events").fetchone()[0] or 0)
        except sqlite3.Error as exc:
            db.close()
            raise JournalError(f"{self.path}: {exc}") from None
        except JournalError:
            db.close()
            raise

    def quarantine(self) -> Path:
        """Move an unusable events.db (and its WAL) aside, for a human to look at."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{FILENAME}.corrupt-{stamp}")
        self.path.rename(aside)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                self.path.with_name(FILENAME + suffix).rename(aside.with_name(aside.name + suffix))
        return aside

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- publishing (event loop thread) -----------------------------------------------------

    def append(self, event: Event) -> Event:
        """Give ``event`` its id and host and queue it for the next commit."""
        stamped = replace(event, id=self._next_id, host=self.host)
        self._next_id += 1
        self._queued.append(stamped)
        self._wake.set()
        return stamped

    def on_commit(self, listener: Callable[[list[Event]], None]) -> None:
        """Call ``listener`` on the loop with each batch of events once it is committed."""
        self._listeners.append(listener)

    def off_commit(self, listener: Callable[[list[Event]], None]) -> None:
        """Stop calling ``listener`` (a stream whose client has gone)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def run(self, batch_window: float = 0.01) -> None:
        """Commit what is queued, in batches, until cancelled (``flush`` commits the rest)."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(batch_window)  # let a burst (a restart's events) share a commit
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        batch, self._queued = self._queued, []
        if not batch:
            return
        commit = asyncio.ensure_future(self.call(self._commit, batch))
        try:
            # Shielded: the thread commits whether or not this task is cancelled meanwhile,
            # and what it did must be known before anything else commits (or ids collide).
            await asyncio.shield(commit)
        except BaseException:
            await asyncio.wait({commit})
            if commit.cancelled() or commit.exception() is not None:
                self._queued[:0] = batch  # not on disk: commit them with the next batch
            else:
                self._committed(batch)
            raise
        self._committed(batch)

    def flush_sync(self) -> None:
        """Commit what is queued, on the calling thread (at stop)."""
        batch, self._queued = self._queued, []
        if batch:
            self._commit(batch)
            self._committed(batch)

    def _committed(self, batch: list[Event]) -> None:
        self.committed_id = batch[-1].id
        for listener in list(self._listeners):
            try:
                listener(batch)
            except Exception as exc:  # a listener's bug must not stop the commits
                if self.log is not None:
                    self.log.error("event_listener_failed", error=repr(exc))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking method of this journal in a thread."""
        return await asyncio.to_thread(fn, *args)

    # -- blocking: writing ------------------------------------------------------------------

    def _commit(self, batch: list[Event]) -> None:
        now = time.time()
        rows = []
        deliveries: list[tuple[str, int, str, float, float, float]] = []
        for e in batch:
            rows.append(
                (
                    e.id,
                    e.timestamp.timestamp(),
                    format_time(e.timestamp),
                    e.type.value,
                    e.workload,
                    e.host,
                    e.message,
                    e.state_from.value if e.state_from else None,
                    e.state_to.value if e.state_to else None,
                    json.dumps(e.details, default=str),
                )
            )
            deliveries.extend(
                (route.sink, e.id, PENDING, now, now, now)
                for route in self.routes
                if route.wants(e)
            )
        with self._transaction() as db:
            db.executemany(
                f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", rows
            )
            db.executemany(
                "INSERT INTO deliveries (sink, event_id, state, created, next_at, updated) "
                "VALUES (?,?,?,?,?,?)",
                deliveries,
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"{self.path}: not open")
        return self._db

    def add_reminder(self, sink: str, event_id: int) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO deliveries (sink, event_id, reminder, state, created, next_at, "
                "updated) VALUES (?,?,1,?,?,?,?)",
                (sink, event_id, PENDING, now, now, now),
            )

    def settle(self, delivery_id: int, state: str, attempts: int, error: str = "") -> None:
        """Record a final outcome of a delivery."""
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET state=?, attempts=?, updated=?, last_error=? WHERE id=?",
                (state, attempts, time.time(), error, delivery_id),
            )

    def retry_later(self, delivery_id: int, attempts: int, next_at: float, error: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET attempts=?, next_at=?, updated=?, last_error=? WHERE id=?",
                (attempts, next_at, time.time(), error, delivery_id),
            )

    def abandon_other_sinks(self, sinks: Sequence[str]) -> dict[str, int]:
        """Pending deliveries of sinks no longer configured are expired, visibly (they would
        stay pending for ever, and keep their events from being pruned). Per sink: how many."""
        others = f"sink NOT IN ({','.join('?' * len(sinks))})" if sinks else "1"
        with self._transaction() as db:
            found = db.execute(
                f"SELECT sink, count(*) FROM deliveries WHERE state = ? AND {others} GROUP BY sink",
                (PENDING, *sinks),
            ).fetchall()
            db.execute(
                "UPDATE deliveries SET state = ?, updated = ?, last_error = ? "
                f"WHERE state = ? AND {others}",
                (EXPIRED, time.time(), "the sink is no longer configured", PENDING, *sinks),
            )
        return {str(sink): int(count) for sink, count in found}

    def prune(self, max_age: float, max_count: int) -> int:
        """Delete events older than ``max_age`` seconds or beyond the newest ``max_count``,
        with their settled deliveries; an event with a pending delivery is kept. Returns how
        many events went."""
        cutoff = time.time() - max_age
        with self._transaction() as db:
            newest = db.execute("SELECT max(id) FROM events").fetchone()[0] or 0
            keep_from = newest - max_count + 1
            doomed = (
                "(unix < ? OR id < ?) AND id NOT IN (SELECT event_id FROM deliveries WHERE state=?)"
            )
            db.execute(
                f"DELETE FROM deliveries WHERE event_id IN (SELECT id FROM events WHERE {doomed})",
                (cutoff, keep_from, PENDING),
            )
            gone = db.execute(f"DELETE FROM events WHERE {doomed}", (cutoff, keep_from, PENDING))
            return int(gone.rowcount)

    # -- blocking: reading ------------------------------------------------------------------

    def events(
        self,
        *,
        after_id: int = 0,
        workload: str | None = None,
        types: Sequence[str] = (),
        since: float | None = None,
        limit: int = 100,
        newest: bool = False,
    ) -> list[Event]:
        """Events in id order (``newest``: the last ``limit`` of them, still in id order).
        Only committed events are in the database: what this returns is never taken back."""
        where: list[str] = ["id > ?"]
        args: list[Any] = [after_id]
        if workload is not None:
            where.append("workload = ?")
            args.append(workload)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            args.extend(types)
        if since is not None:
            where.append("unix >= ?")
            args.append(since)
        order = "DESC" if newest else "ASC"
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
            f"ORDER BY id {order} LIMIT ?"
        )
        with self._lock:
            rows = self._connection().execute(sql, (*args, limit)).fetchall()
        found = [_row_event(r) for r in rows]
        return found[::-1] if newest else found

    def due(self, sink: str, limit: int = 20) -> list[Delivery]:
        """The sink's pending deliveries, oldest event first (a sink delivers in order)."""
        sql = (
            f"SELECT d.id, d.reminder, d.attempts, d.created, d.next_at, "
            f"{', '.join('e.' + c.strip() for c in _EVENT_COLUMNS.split(','))} "
            "FROM deliveries d JOIN events e ON e.id = d.event_id "
            "WHERE d.sink = ? AND d.state = ? ORDER BY d.id LIMIT ?"
        )
        with self._lock:
            rows = self._connection().execute(sql, (sink, PENDING, limit)).fetchall()
        return [
            Delivery(
                id=r[0],
                sink=sink,
                reminder=bool(r[1]),
                attempts=r[2],
                created=r[3],
                next_at=r[4],
                event=_row_event(r[5:]),
            )
            for r in rows
        ]

    def counts(self) -> dict[str, SinkCounts]:
        """Per sink: deliveries by state, the last error and when it last delivered."""
        with self._lock:
            db = self._connection()
            by_state = db.execute(
                "SELECT sink, state, count(*), max(CASE WHEN state=? THEN updated END) "
                "FROM deliveries GROUP BY sink, state",
                (DELIVERED,),
            ).fetchall()
            errors = db.execute(
                "SELECT sink, last_error FROM deliveries WHERE last_error != '' AND id IN "
                "(SELECT max(id) FROM deliveries WHERE last_error != '' GROUP BY sink)"
            ).fetchall()
        table: dict[str, dict[str, Any]] = {}
        for sink, state, count, delivered_at in by_state:
            entry = table.setdefault(sink, {"last_delivered": None})
            entry[state] = count
            if delivered_at is not None:
                entry["last_delivered"] = delivered_at
        last_errors = dict(errors)
        return {
            sink: SinkCounts(
                pending=entry.get(PENDING, 0),
                delivered=entry.get(DELIVERED, 0),
                failed=entry.get(FAILED, 0),
                expired=entry.get(EXPIRED, 0),
                suppressed=entry.get(SUPPRESSED, 0),
                last_error=last_errors.get(sink, ""),
                last_delivered=entry["last_delivered"],
            )
            for sink, entry in table.items()
        }

    def pending_counts(self) -> dict[str, int]:
        """Per sink with any: its pending deliveries. Cheaper than ``counts`` (the index
        alone answers it), for every scrape of /metrics."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT sink, count(*) FROM deliveries WHERE state = ? GROUP BY sink",
                    (PENDING,),
                )
                .fetchall()
            )
        return dict(rows)

    def last_event_of(self, workload: str, types: Sequence[str]) -> Event | None:
        found = self.events(workload=workload, types=types, limit=1, newest=True)
        return found[0] if found else None
