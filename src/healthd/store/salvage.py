"""What can still be read from a damaged events.db, for the new one that replaces it.

A damaged page ends a table scan there; the rows before it, and (scanning back from the end)
the rows after it, are still readable. Every row is checked before it is copied: a damaged
page can also pass for a good one with nonsense in it. The damaged file itself is left as it
was found, beside the new one, for a human.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from healthd.model import EventType, State

MAX_ROWS = 1_000_000  # per table: far more than a journal keeps (events.max_count)
MAX_COPY = 256 << 20  # bytes: a file cut short is read into memory, up to this size
EVENT_COLUMNS = "id, unix, time, type, workload, host, message, state_from, state_to, details"
DELIVERY_COLUMNS = (
    "id, sink, event_id, reminder, state, attempts, created, next_at, updated, last_error"
)
_TYPES = frozenset(t.value for t in EventType)
_STATES = frozenset(s.value for s in State)
_DELIVERY_STATES = frozenset({"pending", "delivered", "failed", "expired", "suppressed"})


def _open(path: Path) -> sqlite3.Connection | None:
    quoted = urllib.parse.quote(str(path.absolute()))
    for options in ("mode=ro", "immutable=1"):  # immutable: without its -wal/-shm files
        try:
            db = sqlite3.connect(f"file:{quoted}?{options}", uri=True)
        except sqlite3.Error:
            continue
        try:
            db.execute("SELECT 1 FROM events NOT INDEXED LIMIT 1").fetchall()
        except sqlite3.Error:
            db.close()
            continue
        return db
    return None


def _padded(path: Path) -> sqlite3.Connection | None:
    """A file cut short, in memory, padded with zeros to the size its header gives: SQLite
    refuses the whole file otherwise, and the pages before the cut are readable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_COPY + 1)
    except OSError:
        return None
    if len(data) < 100 or len(data) > MAX_COPY or not data.startswith(b"SQLite format 3\0"):
        return None
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(data[28:32], "big")
    wanted = page_size * pages
    if page_size < 512 or wanted > MAX_COPY:
        return None
    # bytes 18-19 say "WAL": a database in memory cannot have one
    image = data[:18] + b"\x01\x01" + data[20:]
    db = sqlite3.connect(":memory:")
    try:
        db.deserialize(image.ljust(wanted, b"\0"))
        db.execute("SELECT 1 FROM events NOT INDEXED LIMIT 1").fetchall()
    except sqlite3.Error:
        db.close()
        return None
    return db


def _rows(db: sqlite3.Connection, table: str, columns: str) -> list[tuple[Any, ...]]:
    # NOT INDEXED: the table's own pages only, so a damaged index hides no row
    found: dict[int, tuple[Any, ...]] = {}
    for sql in (
        f"SELECT {columns} FROM {table} NOT INDEXED ORDER BY id",
        f"SELECT {columns} FROM {table} NOT INDEXED WHERE id > ? ORDER BY id DESC",
    ):
        args = (max(found, default=0),) if "?" in sql else ()
        try:
            for row in db.execute(sql, args):
                if isinstance(row[0], int):
                    found[row[0]] = row
                if len(found) >= MAX_ROWS:
                    break
        except sqlite3.DatabaseError:
            continue  # a damaged page: what was read before it is kept
    return [found[key] for key in sorted(found)]


def _is_event(row: Sequence[Any]) -> bool:
    _id, unix, stamp, kind, workload, host, message, state_from, state_to, details = row
    texts = (stamp, workload, host, message, details)
    return (
        isinstance(unix, int | float)
        and all(isinstance(t, str) for t in texts)
        and kind in _TYPES
        and all(s is None or s in _STATES for s in (state_from, state_to))
    )


def _is_delivery(row: Sequence[Any], events: set[int]) -> bool:
    _id, sink, event_id, reminder, state, attempts, created, next_at, updated, error = row
    numbers = (created, next_at, updated)
    return (
        isinstance(sink, str)
        and event_id in events
        and state in _DELIVERY_STATES
        and isinstance(reminder, int)
        and isinstance(attempts, int)
        and all(isinstance(n, int | float) for n in numbers)
        and isinstance(error, str)
    )


def _read(db: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    try:
        events = [r for r in _rows(db, "events", EVENT_COLUMNS) if _is_event(r)]
        ids = {r[0] for r in events}
        deliveries = [r for r in _rows(db, "deliveries", DELIVERY_COLUMNS) if _is_delivery(r, ids)]
    finally:
        db.close()
    return events, deliveries


def salvage(old: Path, into: sqlite3.Connection) -> tuple[int, int]:
    """Copy the readable events of ``old`` (and their deliveries) into ``into``, keeping
    their ids; (events, deliveries) copied. Nothing readable: (0, 0)."""
    events: list[tuple[Any, ...]] = []
    deliveries: list[tuple[Any, ...]] = []
    for opener in (_open, _padded):  # the file with its log first; cut short, padded
        db = opener(old)
        if db is not None:
            events, deliveries = _read(db)
        if events:
            break
    into.execute("BEGIN IMMEDIATE")
    try:
        into.executemany(
            f"INSERT OR IGNORE INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", events
        )
        into.executemany(
            f"INSERT OR IGNORE INTO deliveries ({DELIVERY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            deliveries,
        )
        into.execute("COMMIT")
    except BaseException:
        if into.in_transaction:
            into.execute("ROLLBACK")
        raise
    return len(events), len(deliveries)
