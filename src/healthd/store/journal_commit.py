"""Publishing events: ids given on the event loop, a queue, and commits in batches from a
thread, with a delivery row for every sink that wants each event, in the same transaction.

A commit that fails (a full disk: SQLITE_FULL) is rolled back whole and its events stay queued,
in order, with the events published after them; ``run`` tries again every ``retry_interval``
until the disk takes them, saying so once per episode (``health``). While the journal is in
memory (``in_memory``), ``run`` also tries to move it to the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace

from healthd.model import Event
from healthd.store.journal_file import JournalFile
from healthd.store.journal_schema import EVENT_COLUMNS, PENDING, JournalError, storable
from healthd.store.status import format_time


class JournalCommits(JournalFile):
    """The queue of published events and the batches committed from it."""

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
