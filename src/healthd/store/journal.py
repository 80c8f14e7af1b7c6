"""events.db: every event, committed before any delivery, and each sink's delivery outbox.

SQLite (stdlib sqlite3) in WAL mode in the status dir, ``synchronous=FULL``: a committed event
survives a crash of the daemon or the host. Events are given their ``id`` when published (one
writer: the daemon), queued, and committed in batches from a thread a few milliseconds later,
with a delivery row for every sink that wants them, in the same transaction. Only then are
they delivered, streamed or shown, so nothing is ever delivered that a crash could take back.

Every method that touches the database blocks: the daemon calls them through ``call``, in a
thread, one at a time.

``Journal`` is put together from one class per concern, each in its own module:

- ``journal_schema``: the tables, the delivery states, an event as a row and back
- ``journal_base``: the state the others share, the connection and its lock
- ``journal_file``: opening, checking, moving aside and salvaging events.db, and the journal
  in memory while the disk will not let it be opened
- ``journal_commit``: publishing: ids, the queue, commits in batches and their retries
- ``journal_outbox``: deliveries' outcomes and retries, reminders, retention
- ``journal_queries``: reading events and the outbox

The rest of healthd imports from here only.
"""

from __future__ import annotations

from healthd.store.journal_base import MAX_UNSAVED, RETRY_INTERVAL
from healthd.store.journal_commit import JournalCommits
from healthd.store.journal_outbox import JournalOutbox
from healthd.store.journal_queries import JournalQueries
from healthd.store.journal_schema import (
    DELIVERED,
    EXPIRED,
    FAILED,
    FILENAME,
    OUTCOMES,
    PENDING,
    SCHEMA_VERSION,
    SUPPRESSED,
    Delivery,
    JournalError,
    Route,
    SinkCounts,
    event_json,
)

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


class Journal(JournalCommits, JournalOutbox, JournalQueries):
    """events.db, opened for writing (the daemon) or for reading (``healthd events``)."""
