"""A journal in memory, for a run whose events.db the disk will not let be opened (full,
read-only), and its move to the file once the disk lets it.

Its event ids follow the last one in the file, and its delivery ids start far above the file's:
rows move to the file with the ids they have, so a dispatcher holding a delivery across the
move settles the right row.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import urllib.parse
from pathlib import Path

from healthd.store.salvage import DELIVERY_COLUMNS, EVENT_COLUMNS

DELIVERY_ID_GAP = 1 << 32  # above any delivery id the file may hold that could not be read


def last_ids_on_disk(path: Path) -> tuple[int, int]:
    """(last event id, last delivery id) in ``path``, read without writing anything; with
    its write-ahead log if SQLite can, else as last checkpointed; (0, 0) when unreadable."""
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.lstat(path).st_mode):  # a link, a FIFO: nothing of ours
            return 0, 0
    quoted = urllib.parse.quote(str(path.absolute()))
    for options in ("mode=ro", "immutable=1"):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{quoted}?{options}", uri=True)) as db:
                events = db.execute("SELECT max(id) FROM events").fetchone()[0] or 0
                deliveries = db.execute("SELECT max(id) FROM deliveries").fetchone()[0] or 0
                return int(events), int(deliveries)
        except sqlite3.Error:
            continue
    return 0, 0


def seed_delivery_ids(db: sqlite3.Connection, after: int) -> None:
    """Make the next delivery id of ``db`` (a new database, schema made) ``after + GAP + 1``:
    a row with the id before it, kept (SQLite takes max(id) + 1), marked as not a delivery."""
    db.execute(
        "INSERT INTO deliveries (id, sink, event_id, state, created, next_at, updated) "
        "VALUES (?, '', 0, 'placeholder', 0, 0, 0)",
        (after + DELIVERY_ID_GAP,),
    )


def copy_rows(source: sqlite3.Connection, into: sqlite3.Connection) -> tuple[int, int]:
    """Every event and delivery of ``source`` into ``into``, ids kept, in one transaction;
    (events, deliveries) written. An event id the file has already keeps the file's."""
    events = source.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY id").fetchall()
    deliveries = source.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state != 'placeholder' ORDER BY id"
    ).fetchall()
    into.execute("BEGIN IMMEDIATE")
    try:
        written = into.executemany(
            f"INSERT OR IGNORE INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", events
        ).rowcount
        into.executemany(
            f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            deliveries,
        )
        into.execute("COMMIT")
    except BaseException:
        if into.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                into.execute("ROLLBACK")
        raise
    return int(written), len(deliveries)
