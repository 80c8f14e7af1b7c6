"""The one internal interface events leave through: ``EventBus.publish`` to ``EventSink``s.

The daemon publishes every event here. Core ships the log sink; durable journals and
notification sinks plug in as more ``EventSink``s without the engine changing.
"""

from __future__ import annotations

from typing import Protocol

from healthd.logs import Logger
from healthd.model import Event, EventType


class EventSink(Protocol):
    """Receives every event, on the event loop thread. Must return quickly and not block."""

    def publish(self, event: Event) -> None: ...


class EventBus:
    """Fans events out to sinks; a sink that raises is logged and never stops the others."""

    def __init__(self, log: Logger, sinks: list[EventSink] | None = None) -> None:
        self.log = log
        self.sinks: list[EventSink] = list(sinks or [])

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def publish(self, event: Event) -> None:
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
}


class LogSink:
    """Writes each event as one structured log line."""

    def __init__(self, log: Logger) -> None:
        self.log = log

    def publish(self, event: Event) -> None:
        fields: dict[str, object] = {"workload": event.workload, "message": event.message}
        if event.state_to is not None:
            fields["state"] = f"{event.state_from}->{event.state_to}"
        level = _LEVELS.get(event.type, "info")
        getattr(self.log, level)(event.type.value, **fields)
