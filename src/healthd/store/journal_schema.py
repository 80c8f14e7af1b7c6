"""events.db's tables, the states of a delivery, and an event as a row and back.

Deliveries move pending -> delivered | failed (permanent) | expired (too old to retry) |
suppressed (noise control); none is ever deleted while pending.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from healthd.model import Event, EventType, State
from healthd.store.status import format_time, parse_time

FILENAME = "events.db"
SCHEMA_VERSION = 1

SCHEMA = """
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

# in the order ``row_event`` reads them
EVENT_COLUMNS = "id, unix, time, type, workload, host, message, state_from, state_to, details"

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


def row_event(row: Sequence[Any]) -> Event:
    event_id, _unix, stamp, kind, workload, host, message, state_from, state_to, details = row
    return Event(
        type=EventType(kind),
        workload=workload,
        timestamp=parse_time(stamp) or datetime.fromtimestamp(_unix, UTC),
        message=message,
        state_from=State(state_from) if state_from else None,
        state_to=State(state_to) if state_to else None,
        details=_details(details),
        id=event_id,
        host=host,
    )


def _details(text: str) -> dict[str, Any]:
    # A damaged page (a file cut short by a crash of the host) can pass SQLite's checks with a
    # record's bytes zeroed: the event is still shown, with what is left of its details.
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"unreadable": str(text)}
    return parsed if isinstance(parsed, dict) else {"unreadable": str(text)}


def storable(value: str) -> str:
    """``value`` as SQLite can store it. A file name that is not UTF-8 reaches Python with
    lone surrogates, and one such event would otherwise fail every commit after it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value
