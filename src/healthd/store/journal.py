"""events.db: every event, committed before any delivery, and each sink's delivery outbox.

SQLite (stdlib sqlite3) in WAL mode in the status dir, ``synchronous=FULL``: a committed event
survives a crash of the daemon or the host. Events are given their ``id`` when published (one
writer: the daemon), queued, and committed in batches from a thread a few milliseconds later,
with a delivery row for every sink that wants them, in the same transaction. Only then are
they delivered, streamed or shown, so nothing is ever delivered that a crash could take back.

The tables, the states of a delivery, and an event as a row and back: journal_schema.

Every method that touches the database blocks: the daemon calls them through ``call``, in a
thread, one at a time.

A commit that fails (a full disk: SQLITE_FULL) is rolled back whole and its events stay queued,
in order, with the events published after them; ``run`` tries again every ``retry_interval``
until the disk takes them, saying so once per episode (``health``). At start, a file that is not
a usable database is refused (``open`` raises JournalError: the caller moves it aside), and a
write-ahead log that is not one is moved aside here: SQLite would silently ignore it.
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
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from healthd.logs import Logger
from healthd.model import Event
from healthd.store.health import WriteHealth
from healthd.store.journal_schema import (
    DELIVERED,
    EVENT_COLUMNS,
    EXPIRED,
    FAILED,
    FILENAME,
    OUTCOMES,
    PENDING,
    SCHEMA,
    SCHEMA_VERSION,
    SUPPRESSED,
    Delivery,
    JournalError,
    Route,
    SinkCounts,
    event_json,
    row_event,
    storable,
)
from healthd.store.memory import copy_rows, last_ids_on_disk, seed_delivery_ids
from healthd.store.salvage import salvage
from healthd.store.status import format_time

RETRY_INTERVAL = 1.0  # after a failed commit; a failing commit costs next to nothing
# Events held in memory while the disk refuses them, at most: a disk full for days under a
# flapping workload must not take the daemon's memory, and monitoring, with it.
MAX_UNSAVED = 100_000
# The first four bytes of a write-ahead log, big- or little-endian checksums (sqlite.org/walformat)
_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")
T = TypeVar("T")

__all__ = [
    "DELIVERED",
    "EXPIRED",
    "FAILED",
    "FILENAME",
    "MAX_UNSAVED",
    "OUTCOMES",
    "PENDING",
    "RETRY_INTERVAL",
    "SCHEMA_VERSION",
    "SUPPRESSED",
    "Delivery",
    "Journal",
    "JournalError",
    "Route",
    "SinkCounts",
    "event_json",
]


class _Unwritable(Exception):
    """events.db cannot be opened for writing (a full or read-only disk): its content is not
    in question, so it must not be moved aside."""


# SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN: the disk's doing
_STORAGE_CODES = frozenset({3, 8, 10, 13, 14})


def _is_storage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _STORAGE_CODES


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
        self.committed_id = 0  # the highest id committed (on disk, or in memory: in_memory)
        self.retry_interval = RETRY_INTERVAL
        self.max_unsaved = MAX_UNSAVED
        self.dropped = 0  # events given up while the disk refused them, since the start
        self._salvage_from: Path | None = None  # set by quarantine, for the next open
        self.in_memory = False  # see _open_in_memory
        self.health = WriteHealth(
            FILENAME,
            str(path),
            log,
            failing_event="event_journal_commit_failed",
            consequence="events are kept in memory, in order, and committed when the disk "
            "takes them; deliveries wait for them",
        )

    @property
    def unsaved(self) -> int:
        """Events published but not committed yet (held in memory while the disk refuses)."""
        return len(self._queued)

    # -- opening ----------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) events.db; raises JournalError when it is not a usable database.
        Returns normally after moving aside a write-ahead log that is not one (logged), and
        when the disk will not let it be opened (full, read-only): then the journal of this run
        is kept in memory (``in_memory``), loudly, and the file is left as it is."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._check_wal()
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            last = self._prepare(db, writable=True)
        except (OSError, _Unwritable) as exc:
            self._open_in_memory(exc.__cause__ or exc)
            return
        except sqlite3.Error as exc:
            if _is_storage(exc):
                self._open_in_memory(exc)
                return
            raise JournalError(f"{self.path}: {exc}") from None
        if self._salvage_from is not None:
            last = max(last, self._salvage(db, self._salvage_from))
            self._salvage_from = None
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
                # A file cut short or overwritten in the middle opens fine and fails later,
                # at some commit: find out now, while it can still be moved aside.
                found = db.execute("PRAGMA quick_check(1)").fetchone()[0]
                if found != "ok":
                    raise JournalError(f"{self.path}: database is damaged: {found}")
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return int(db.execute("SELECT max(id) FROM events").fetchone()[0] or 0)
        except sqlite3.Error as exc:
            db.close()
            if writable and _is_storage(exc):
                raise _Unwritable(str(exc)) from exc
            raise JournalError(f"{self.path}: {exc}") from None
        except JournalError:
            db.close()
            raise

    def _open_in_memory(self, exc: BaseException) -> None:
        """The journal in memory until the disk lets events.db be opened (``run`` tries every
        ``retry_interval``, ``_move_to_disk`` moves it): events are committed, delivered and
        shown as usual meanwhile. Ids follow the file's, as far as they can be read."""
        last, last_delivery = last_ids_on_disk(self.path)
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._prepare(db, writable=True)
        seed_delivery_ids(db, last_delivery)
        self._db = db
        self.in_memory = True
        self._next_id = last + 1
        self.committed_id = last
        consequence = (
            "events are kept in memory, committed, delivered and shown as usual; events.db is "
            "left as it is, opened again every few seconds, and given them once it opens"
        )
        self.health.failed(exc, consequence=consequence)

    def _move_to_disk(self) -> bool:
        """Open events.db and move the journal in memory into it; False while it will not."""
        try:
            self._check_wal()
            disk = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._prepare(disk, writable=True)
        except (OSError, sqlite3.Error, _Unwritable, JournalError) as exc:
            self.health.failed(exc)  # logged if the reason changed (a damaged file, say)
            return False
        with self._lock:
            memory = self._connection()
            try:
                events, deliveries = copy_rows(memory, disk)
            except sqlite3.Error as exc:
                disk.close()
                self.health.failed(exc)
                return False
            self._db = disk
            self.in_memory = False
            memory.close()
        if self.log is not None:
            self.log.info(
                "event_journal_on_disk", path=str(self.path), events=events, deliveries=deliveries
            )
        return True

    def _salvage(self, db: sqlite3.Connection, old: Path) -> int:
        """Copy what is readable of the file moved aside into the new one; the last id."""
        try:
            events, deliveries = salvage(old, db)
            last = int(db.execute("SELECT max(id) FROM events").fetchone()[0] or 0)
        except sqlite3.Error as exc:  # the new file: it was just created, so a full disk
            if self.log is not None:
                self.log.error("event_journal_salvage_failed", path=str(old), error=str(exc))
            return 0
        if self.log is not None:
            self.log.warning(
                "event_journal_salvaged",
                path=str(old),
                events=events,
                deliveries=deliveries,
                consequence="the events still readable in the damaged file are kept in the new "
                "one, with their ids and their pending deliveries",
            )
        return last

    def _check_wal(self) -> None:
        """Move aside an events.db-wal that does not start like a write-ahead log. SQLite
        ignores such a file, and overwrites it: nobody would ever know it was there."""
        wal = self.path.with_name(FILENAME + "-wal")
        try:
            with open(wal, "rb") as fh:
                head = fh.read(4)
        except FileNotFoundError:
            return
        if not head or head in _WAL_MAGIC:
            return  # empty (checkpointed) or a log, whole or cut short: SQLite recovers it
        aside = wal.with_name(f"{wal.name}.corrupt-{_stamp()}")
        wal.rename(aside)
        if self.log is not None:
            self.log.error(
                "event_journal_wal_unusable",
                path=str(wal),
                error="not a write-ahead log (bad magic number)",
                moved_to=str(aside),
                consequence="events.db is opened as last checkpointed; the log is kept aside",
            )

    def quarantine(self) -> Path:
        """Move an unusable events.db (and its WAL) aside, for a human to look at."""
        aside = self.path.with_name(f"{FILENAME}.corrupt-{_stamp()}")
        self.path.rename(aside)
        self._salvage_from = aside
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                self.path.with_name(FILENAME + suffix).rename(aside.with_name(aside.name + suffix))
        return aside

    def close(self) -> None:
        if self.in_memory and self._db is not None and not self._move_to_disk():  # a last try
            with self._lock:
                kept = self._connection().execute("SELECT count(*) FROM events").fetchone()[0]
            if self.log is not None:
                self.log.error(
                    "event_journal_not_saved",
                    path=str(self.path),
                    events=kept,
                    error=self.health.error,
                    consequence="the events of this run were kept in memory only (delivered "
                    "as usual); they go with it",
                )
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
        if len(self._queued) > self.max_unsaved:
            self._drop_oldest()
        self._wake.set()
        return stamped

    def _drop_oldest(self) -> None:
        """The oldest events held in memory go: the newest say what is going on now."""
        excess = len(self._queued) - self.max_unsaved
        gone = self._queued[:excess]
        del self._queued[:excess]
        before, self.dropped = self.dropped, self.dropped + excess
        if self.log is not None and (before == 0 or before // 10_000 != self.dropped // 10_000):
            self.log.error(
                "events_dropped",
                dropped=self.dropped,
                last_dropped_id=gone[-1].id,
                reason=f"more than {self.max_unsaved} events wait for the disk; the oldest go",
            )

    def on_commit(self, listener: Callable[[list[Event]], None]) -> None:
        """Call ``listener`` on the loop with each batch of events once it is committed."""
        self._listeners.append(listener)

    def off_commit(self, listener: Callable[[list[Event]], None]) -> None:
        """Stop calling ``listener`` (a stream whose client has gone)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def run(self, batch_window: float = 0.01) -> None:
        """Commit what is queued, in batches, until cancelled (``flush`` commits the rest).
        A commit that fails keeps its events queued and is tried again; it never ends this."""
        if self._queued:
            self._wake.set()  # published before this started, or left by a failed flush
        while True:
            if self.in_memory:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.retry_interval):
                        await self._wake.wait()
                if await self.call(self._move_to_disk):
                    self.health.succeeded()
                if not self._wake.is_set():
                    continue
            await self._wake.wait()
            await asyncio.sleep(batch_window)  # let a burst (a restart's events) share a commit
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # a full disk; the batch is queued again, in order
                self.health.failed(exc)
                await asyncio.sleep(self.retry_interval)
                self._wake.set()
            else:
                if not self.in_memory:  # a commit in memory is not a write that worked
                    self.health.succeeded()

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
        """Commit what is queued, on the calling thread (at stop). When the disk still refuses,
        the events are lost with the process: logged, each, rather than raised at exit."""
        batch, self._queued = self._queued, []
        if not batch:
            return
        try:
            self._commit(batch)
        except (sqlite3.Error, JournalError, OSError) as exc:
            self._queued[:0] = batch
            self.health.failed(exc)
            if self.log is not None:
                for event in batch:
                    self.log.error(
                        "event_not_saved",
                        id=event.id,
                        type=event.type.value,
                        workload=event.workload,
                        message=event.message,
                    )
            return
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
                    storable(e.workload),
                    storable(e.host),
                    storable(e.message),
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
                f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", rows
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
                db.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself failed (SQLITE_FULL): SQLite may leave the transaction
                # open, and every BEGIN after it would fail for good. When SQLite has rolled
                # back already, this ROLLBACK fails harmlessly.
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

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
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
            f"ORDER BY id {order} LIMIT ?"
        )
        with self._lock:
            rows = self._connection().execute(sql, (*args, limit)).fetchall()
        found = [row_event(r) for r in rows]
        return found[::-1] if newest else found

    def due(self, sink: str, limit: int = 20) -> list[Delivery]:
        """The sink's pending deliveries, oldest event first (a sink delivers in order)."""
        sql = (
            f"SELECT d.id, d.reminder, d.attempts, d.created, d.next_at, "
            f"{', '.join('e.' + c.strip() for c in EVENT_COLUMNS.split(','))} "
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
                event=row_event(r[5:]),
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


def _stamp() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}.{time.time_ns() % 1_000_000_000:09d}"
