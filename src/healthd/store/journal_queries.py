"""Reading events.db: events (the API, ``healthd events``, reminders) and the outbox (the
dispatchers, /v1/status, /metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from healthd.model import Event
from healthd.store.journal_base import JournalBase
from healthd.store.journal_schema import (
    DELIVERED,
    EVENT_COLUMNS,
    EXPIRED,
    FAILED,
    PENDING,
    SUPPRESSED,
    Delivery,
    SinkCounts,
    row_event,
)


class JournalQueries(JournalBase):
    """The blocking reads; the daemon runs them through ``call``."""

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
