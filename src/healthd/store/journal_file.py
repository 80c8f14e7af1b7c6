"""Opening events.db: the schema check, a write-ahead log or a file that cannot be used,
moved aside (and what is readable of it salvaged), and the journal kept in memory while the
disk will not let the file be opened.

At start, a file that is not a usable database is refused (``open`` raises JournalError: the
caller moves it aside with ``quarantine``, and the next ``open`` salvages it), and a write-ahead
log that is not one is moved aside here: SQLite would silently ignore it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path

from healthd.store.journal_base import JournalBase
from healthd.store.journal_schema import FILENAME, SCHEMA, SCHEMA_VERSION, JournalError
from healthd.store.memory import copy_rows, last_ids_on_disk, seed_delivery_ids
from healthd.store.salvage import salvage
from healthd.store.state_files import SQLITE_SIDE_SUFFIXES, open_state_file, set_mode

# The first four bytes of a write-ahead log, big- or little-endian checksums (sqlite.org/walformat)
_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


class _Unwritable(Exception):
    """events.db cannot be opened for writing (a full or read-only disk): its content is not
    in question, so it must not be moved aside."""


# SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN: the disk's doing
_STORAGE_CODES = frozenset({3, 8, 10, 13, 14})


def _is_storage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _STORAGE_CODES


class JournalFile(JournalBase):
    """Opening and closing events.db, and the journal in memory meanwhile."""

    def open(self) -> None:
        """Open (or create) events.db; raises JournalError when it is not a usable database.
        Returns normally after moving aside a write-ahead log that is not one (logged), and
        when the disk will not let it be opened (full, read-only): then the journal of this run
        is kept in memory (``in_memory``), loudly, and the file is left as it is."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
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

    def _connect(self) -> sqlite3.Connection:
        """Connect to events.db as it is in the status dir, never through a link: a link
        planted under its name or a side file's is removed first (logged), the file is created
        here with the journal's mode (an existing one gets that mode), and what SQLite opened
        is checked to be that file (a link planted in between is refused: JournalError)."""
        expected = os.path.join(os.path.realpath(self.path.parent), FILENAME)
        for suffix in SQLITE_SIDE_SUFFIXES:
            set_mode(self.path.with_name(FILENAME + suffix), self.mode, self.log)
        self._check_wal()
        fd = open_state_file(self.path, self.mode, self.log, create=True)
        assert fd is not None  # created if missing
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                # SQLite names the file it opened with every link resolved
                opened = db.execute("PRAGMA database_list").fetchone()[2]
                same = opened == expected and os.path.samestat(os.fstat(fd), os.stat(opened))
            except (sqlite3.Error, OSError):
                db.close()
                raise
        finally:
            os.close(fd)
        if not same:
            db.close()
            raise JournalError(
                f"{self.path}: replaced while being opened (SQLite opened {opened}); not used"
            )
        return db

    def open_readonly(self) -> None:
        """Open an existing events.db for reading only (``healthd events``): never created,
        never written (SQLite may add the -wal and -shm files beside it, as for any reader of
        a WAL database), safe beside the daemon writing it: readers do not block it.
        Raises FileNotFoundError when there is none, JournalError when it is unusable."""
        if not self.path.is_file():
            raise FileNotFoundError(self.path)
        for name in (FILENAME, *(FILENAME + s for s in SQLITE_SIDE_SUFFIXES)):
            if self.path.with_name(name).is_symlink():  # only the daemon removes it
                raise JournalError(f"{self.path.with_name(name)}: a symbolic link; not followed")
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
            disk = self._connect()
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


def _stamp() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}.{time.time_ns() % 1_000_000_000:09d}"
