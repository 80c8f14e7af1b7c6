"""The one internal interface events leave through: ``EventBus.publish`` to ``EventSink``s.

The daemon publishes every event here. Core ships the log sink; durable journals and
notification sinks plug in as more ``EventSink``s without the engine changing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from healthd.logs import Logger
from healthd.model import Event, EventType

if TYPE_CHECKING:
    from healthd.store.journal import Journal


class EventSink(Protocol):
    """Receives every event, on the event loop thread. Must return quickly and not block."""

    def publish(self, event: Event) -> None: ...


class EventBus:
    """Fans events out to sinks; a sink that raises is logged and never stops the others.

    With a journal, every event is first given its id and queued for the journal's next
    commit; notification sinks deliver from the journal's outbox, after that commit.
    """

    def __init__(
        self, log: Logger, sinks: list[EventSink] | None = None, journal: Journal | None = None
    ) -> None:
        self.log = log
        self.sinks: list[EventSink] = list(sinks or [])
        self.journal = journal

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def publish(self, event: Event) -> None:
        if self.journal is not None:
            event = self.journal.append(event)
        for sink in self.sinks:
            try:
                sink.publish(event)
            except Exception as exc:  # a sink's bug must not stop monitoring
                self.log.error("event_sink_failed", sink=type(sink).__name__, error=repr(exc))


_LEVELS = {
    EventType.CHECK_FAIL: "warning",
    EventType.UNHEALTHY: "error",
    EventType.RESTART_FAILED: "error",
    EventType.RESTART_EXHAUSTED: "error",
    EventType.CONFIG_ERROR: "error",
}


# The daemon logs these itself, with more fields than an event carries (counts, dirs).
_LOGGED_BY_DAEMON = frozenset(
    {
        EventType.DAEMON_STARTED,
        EventType.DAEMON_STOPPING,
        EventType.CONFIG_ERROR,
        EventType.PAUSED,
        EventType.RESUMED,
    }
)


class LogSink:
    """Writes each event as one structured log line."""

    def __init__(self, log: Logger) -> None:
        self.log = log

    def publish(self, event: Event) -> None:
        if event.type in _LOGGED_BY_DAEMON:
            return
        fields: dict[str, object] = {"workload": event.workload, "message": event.message}
        if event.state_to is not None:
            fields["state"] = f"{event.state_from}->{event.state_to}"
        level = _LEVELS.get(event.type, "info")
        getattr(self.log, level)(event.type.value, **fields)
