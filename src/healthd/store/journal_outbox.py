"""The outbox after the commit: each delivery's outcome or next try, reminders, sinks no longer
configured, and retention. Nothing here deletes a pending delivery or the event it is for."""

from __future__ import annotations

import time
from collections.abc import Sequence

from healthd.store.journal_base import JournalBase
from healthd.store.journal_schema import EXPIRED, PENDING


class JournalOutbox(JournalBase):
    """Changes to deliveries already committed, and pruning."""

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
