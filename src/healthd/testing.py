"""Helpers for testing code that uses healthd (and for healthd's own tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from healthd.model import Event, EventType


class ManualClock:
    """A ``Clock`` that moves only when told to: both its clocks advance together."""

    def __init__(self, start: datetime | None = None, monotonic: float = 1000.0) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = monotonic

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._now += timedelta(seconds=seconds)

    def jump_wall(self, seconds: float) -> None:
        """Move only the wall clock (an NTP step, a manual change): the monotonic one stays."""
        self._now += timedelta(seconds=seconds)


class RecordingSink:
    """An ``EventSink`` that keeps every event, for assertions."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def types(self, workload: str | None = None) -> list[EventType]:
        return [e.type for e in self.events if workload is None or e.workload == workload]

    def clear(self) -> None:
        self.events.clear()
