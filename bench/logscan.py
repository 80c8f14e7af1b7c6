"""Reading healthd's JSON log (``--log-format json``) while it is being written.

One JSON object per line, e.g. ``{"workload": "sentinel0", "event": "unhealthy", "level":
"error", "ts": "2026-11-28T04:01:02.123456Z", ...}``. Lines that are not a JSON object with a
string ``event`` (tracebacks, warnings, a half-written last line) are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.workloads import SENTINELS


@dataclass(frozen=True)
class LogEvent:
    event: str
    workload: str | None
    ts: datetime | None
    level: str | None


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)  # Python 3.11 reads the "Z" suffix
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None  # naive: not comparable, unusable


def parse_line(line: str | bytes) -> LogEvent | None:
    """The event of one log line, or None when the line is not a JSON event."""
    try:
        data = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        return None
    workload = data.get("workload")
    level = data.get("level")
    return LogEvent(
        event=data["event"],
        workload=workload if isinstance(workload, str) else None,
        ts=parse_time(data.get("ts")),
        level=level if isinstance(level, str) else None,
    )


class LogFollower:
    """Reads the lines appended to a file since the last call; keeps a partial last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def poll(self) -> list[LogEvent]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return [e for e in map(parse_line, lines) if e is not None]

    def finish(self) -> list[LogEvent]:
        """Like ``poll``, plus a last line without its newline (the writer has exited)."""
        events = self.poll()
        last, self._partial = parse_line(self._partial) if self._partial.strip() else None, b""
        return [*events, last] if last is not None else events


@dataclass
class EventTally:
    """What the bench needs from the events: false failures and sentinel detections."""

    sentinels: tuple[str, ...] = SENTINELS
    check_fails: int = 0  # check_fail of measured (non-sentinel) workloads: false failures
    unhealthy: int = 0  # unhealthy of measured workloads
    sentinel_fails_before_break: int = 0
    scheduler_behind: int = 0  # lines: the daemon's lag p99 went over its warning level
    detected: dict[str, datetime] = field(default_factory=dict)  # first unhealthy after break
    detected_without_time: set[str] = field(default_factory=set)

    def feed(self, events: Iterable[LogEvent], *, after_break: bool) -> None:
        for e in events:
            if e.event == "scheduler_behind":
                self.scheduler_behind += 1
                continue
            sentinel = e.workload in self.sentinels
            if e.event == "check_fail":
                if not sentinel:
                    self.check_fails += 1
                elif not after_break:
                    self.sentinel_fails_before_break += 1
            elif e.event == "unhealthy":
                if not sentinel:
                    self.unhealthy += 1
                elif after_break and e.workload is not None and e.workload not in self.detected:
                    if e.ts is None:
                        self.detected_without_time.add(e.workload)
                    else:
                        self.detected[e.workload] = e.ts

    def all_detected(self) -> bool:
        return all(s in self.detected or s in self.detected_without_time for s in self.sentinels)
