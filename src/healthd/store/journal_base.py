"""What the parts of ``Journal`` share: its state, the one connection and its lock, and the
thread every blocking method runs in."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from healthd.logs import Logger
from healthd.model import Event
from healthd.store.health import WriteHealth
from healthd.store.journal_schema import FILENAME, JournalError, Route
from healthd.store.state_files import OPEN_TO_LOCAL_USERS

RETRY_INTERVAL = 1.0  # after a failed commit; a failing commit costs next to nothing
# Events held in memory while the disk refuses them, at most: a disk full for days under a
# flapping workload must not take the daemon's memory, and monitoring, with it.
MAX_UNSAVED = 100_000
T = TypeVar("T")


class JournalBase:
    """The state of a journal; the methods that use it are in the classes built on it."""

    def __init__(
        self, path: Path, *, host: str, log: Logger | None = None, mode: int = OPEN_TO_LOCAL_USERS
    ) -> None:
        self.path = path
        self.mode = mode  # of events.db and its side files (store/state_files.py)
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

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking method of this journal in a thread."""
        return await asyncio.to_thread(fn, *args)

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
