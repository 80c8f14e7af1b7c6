"""``healthd events``: the event journal, read straight from events.db.

Read-only (SQLite's ``mode=ro``: it never creates the journal, never changes it, never holds
a lock the daemon would wait for), so it works the same whether the daemon runs or not, and
WAL lets it read while the daemon commits. ``--follow`` polls for new events twice a second
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from healthd import durations
from healthd.cli import OK, PROBLEM, USAGE
from healthd.errors import DurationError
from healthd.model import Event, EventType
from healthd.store.journal import FILENAME, Journal, JournalError, event_json

POLL = 0.5
_TYPES = {t.value for t in EventType}
_TYPE_WIDTH = max(len(t) for t in _TYPES)


class _Usage(Exception):
    pass


def cmd_events(args: argparse.Namespace) -> int:
    try:
        types = _types(args.type)
        since = _since(args.since)
    except _Usage as exc:
        print(f"healthd: {exc}", file=sys.stderr)
        return USAGE
    if args.limit < 0:
        print("healthd: --limit must be 0 or more", file=sys.stderr)
        return USAGE
    path: Path = args.status_dir / FILENAME
    journal = Journal(path, host="")
    try:
        journal.open_readonly()
    except FileNotFoundError:
        print(
            f"healthd: no event journal at {path}: the daemon has not run with this status "
            "dir (see --status-dir)",
            file=sys.stderr,
        )
        return PROBLEM
    except JournalError as exc:
        print(f"healthd: {exc}", file=sys.stderr)
        return PROBLEM
    show = _Printer(args.json)
    try:
        limit = args.limit or 2**62
        found = journal.events(
            workload=args.workload, types=types, since=since, limit=limit, newest=True
        )
        if not args.json and not found and not args.follow:
            print("no events", file=sys.stderr)
        show.all(found)
        if args.follow:
            last = found[-1].id if found else journal.committed_id
            journal = _follow(journal, show, last, args.workload, types)
    except BrokenPipeError:  # `healthd events | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:  # Ctrl-C is how --follow ends
        pass
    except JournalError as exc:  # its message names the file
        print(f"healthd: {exc}", file=sys.stderr)
        return PROBLEM
    except sqlite3.Error as exc:
        print(f"healthd: {path}: {exc}", file=sys.stderr)
        return PROBLEM
    finally:
        journal.close()
    return OK


def _follow(
    journal: Journal, show: _Printer, last: int, workload: str | None, types: Sequence[str]
) -> Journal:
    """Print new events until interrupted; returns the journal open at the end."""
    identity = _identity(journal.path)
    try:
        while True:
            time.sleep(POLL)
            now = _identity(journal.path)
            if now is not None and now != identity:
                # events.db was moved aside (unusable) and a new one started, ids from 1.
                fresh = Journal(journal.path, host="")
                try:
                    fresh.open_readonly()
                except (FileNotFoundError, JournalError):
                    continue  # not ready yet: the next poll tries again
                journal.close()
                journal, identity, last = fresh, now, 0
            found = journal.events(after_id=last, workload=workload, types=types, limit=1000)
            show.all(found)
            if found:
                last = found[-1].id
    except KeyboardInterrupt:
        return journal


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class _Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.header = not as_json

    def all(self, events: list[Event]) -> None:
        if self.header and events:
            print(self.line("TIME", "TYPE", "WORKLOAD", "MESSAGE"))
            self.header = False
        for event in events:
            if self.as_json:
                print(json.dumps(event_json(event), ensure_ascii=False, default=str))
            else:
                print(
                    self.line(
                        event.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        event.type.value,
                        event.workload or "-",
                        event.message,
                    )
                )
        sys.stdout.flush()

    @staticmethod
    def line(when: str, kind: str, workload: str, message: str) -> str:
        # Fixed widths rather than a fitted table: --follow prints rows not known yet.
        return f"{when:<20}  {kind:<{_TYPE_WIDTH}}  {workload:<16}  {message}".rstrip()


def _types(values: list[str]) -> tuple[str, ...]:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = sorted(set(names) - _TYPES)
    if unknown:
        raise _Usage(
            f"--type: unknown event type(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_TYPES))})"
        )
    return tuple(dict.fromkeys(names))


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        seconds = durations.parse_seconds(text)
    except DurationError:
        pass
    else:
        if seconds < 0:
            raise _Usage(f"--since: {text!r} is in the future")
        return time.time() - seconds
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _Usage(
            f"--since: {text!r} is neither a duration (1h, 30m) nor an RFC 3339 time "
            "(2024-05-01T12:00:00Z)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.astimezone()  # a time without an offset is the local time
    return stamp.timestamp()
