"""Where events go after the journal: the ``Sink`` protocol and the one registry of kinds.

A sink delivers one event at a time (``deliver``) and says, when it cannot, whether trying
again could help (``DeliveryError(permanent=...)``, as healthchecks' transports do): network
errors, timeouts, 5xx and 429 are worth a retry; a 4xx is not. The dispatcher
(``dispatch.py``) owns order, retries, backoff, expiry and noise control, so sinks stay small.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from healthd.config.sinks import SinkSettings
from healthd.model import Event

if TYPE_CHECKING:
    from healthd.logs import Logger


class DeliveryError(Exception):
    """A delivery that did not happen; ``permanent``: retrying will not help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sink(Protocol):
    settings: SinkSettings

    async def deliver(self, event: Event, *, reminder: bool) -> None:
        """Deliver ``event`` (a reminder: the same event again, while it still holds).
        Returns when the receiver has it; raises DeliveryError when it does not."""
        ...

    async def maintain(self) -> None:
        """Work of the sink's own between deliveries (Alertmanager's re-posting of firing
        alerts); runs until cancelled. Most sinks have none and return at once."""
        ...

    async def close(self) -> None: ...


SinkFactory = Callable[[SinkSettings, "Logger", "FiringSource"], Sink]


class FiringSource(Protocol):
    """What is unhealthy now: the workloads a sink should keep reminding of."""

    def firing(self) -> list[Event]:
        """For each workload unhealthy now, the event that made it so (committed)."""
        ...


def make_sink(settings: SinkSettings, log: Logger, firing: FiringSource) -> Sink:
    """The sink of ``settings.type`` (its module imported only when configured)."""
    if settings.type == "webhook":
        from healthd.sinks.webhook import WebhookSink  # noqa: PLC0415

        return WebhookSink(settings, log)
    if settings.type == "command":
        from healthd.sinks.command import CommandSink  # noqa: PLC0415

        return CommandSink(settings, log)
    if settings.type == "alertmanager":
        from healthd.sinks.alertmanager import AlertmanagerSink  # noqa: PLC0415

        return AlertmanagerSink(settings, log, firing)
    raise ValueError(f"unknown sink type {settings.type!r}")
