"""The Alertmanager sink: an unhealthy workload is a firing alert in Prometheus Alertmanager.

Alerts are POSTed as a JSON list to ``{url}/api/v2/alerts`` (Alertmanager's v2 API), one alert
per workload and host, always with the same labels, so that Alertmanager sees one alert that
fires and resolves::

    alertname: HealthdWorkloadUnhealthy
    workload:  the workload's name
    host:      the node the daemon runs on (the event's host)
    severity:  the sink's ``severity`` (default critical)

and the annotations ``summary`` (workload and host) and ``description`` (the event's message,
which carries the check's error or the restart's outcome).

The events it acts on (every other one is delivered as a no-op, so the sink's default filter,
every type but check_fail, costs nothing):

- ``unhealthy``: fires the alert. ``startsAt`` is the event's time; ``endsAt`` is now + 4 x
  ``resend_interval``, so that Alertmanager resolves the alert by itself if healthd disappears
  (as Prometheus does with its own alerts).
- ``restart_failed`` and ``restart_exhausted``: these only happen while the workload is
  unhealthy; they post the same alert again with their message as the description (restarts
  are failing; the restart budget is spent), and later re-posts keep that description. They
  never start a new alert: ``startsAt`` stays the time the workload became unhealthy.
- ``healthy``: resolves the alert: the same labels with ``endsAt`` the event's time.

A sink whose ``events`` leave out ``unhealthy`` posts no alerts but updates; one that leaves out
``healthy`` lets its alerts end only by ``endsAt``, up to 4 x ``resend_interval`` late. Changing
``severity`` while an alert fires makes a new alert (the labels differ); the old one ends by
itself.

Alertmanager expects a client to re-post what is still firing: ``maintain`` does so every
``resend_interval`` for each workload unhealthy now (what the daemon's ``FiringSource`` says),
pushing ``endsAt`` forward each time. A paused workload is not in that list: its alert is no
longer re-posted and ends by itself (``endsAt``) unless it is resumed still unhealthy, when the
next re-post fires it again. While the daemon is stopped nothing is re-posted; when it starts
again within 4 x ``resend_interval`` the alerts carry on without ending. A failed re-post is
logged (warning) and tried at the next interval; the events themselves go through the outbox,
in order, retried like any delivery, so an Alertmanager that was down gets the alert once it is
back.

Answers: 2xx is a delivery; network errors, timeouts, 5xx and 429 are worth a retry; any other
answer (a 400 for an alert Alertmanager rejects, a 3xx: redirects are not followed) is a
permanent failure. Posts are made one at a time, so a re-post never overtakes the resolution
of the same alert (Alertmanager would take the later firing post as the alert firing again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import httpx

from healthd import __version__
from healthd.config.sinks import SinkSettings, public_url, redact
from healthd.logs import Logger
from healthd.model import Event, EventType
from healthd.sinks import DeliveryError, FiringSource
from healthd.sinks.http_client import BODY_IN_ERROR, describe, new_client, read_start

ALERTNAME = "HealthdWorkloadUnhealthy"
PATH = "/api/v2/alerts"
ENDS_AFTER_RESENDS = 4  # as Prometheus: an alert not re-posted for 4 intervals ends by itself
_FIRES = frozenset({EventType.UNHEALTHY})
_UPDATES = frozenset({EventType.RESTART_FAILED, EventType.RESTART_EXHAUSTED})
_RESOLVES = frozenset({EventType.HEALTHY})


class _Open(NamedTuple):
    """A workload's firing alert as this sink last posted it."""

    latest: Event  # the latest firing event delivered: its message is what re-posts carry
    since: datetime  # when the alert started


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertmanagerSink:
    def __init__(self, settings: SinkSettings, log: Logger, firing: FiringSource) -> None:
        self.settings = settings
        self.log = log.bind(sink=settings.name)
        self.firing = firing
        self.endpoint = settings.url.rstrip("/") + PATH
        self._client: httpx.AsyncClient | None = None
        # One post at a time: see the module's docstring.
        self._posting = asyncio.Lock()
        self._open: dict[str, _Open] = {}  # workload -> its alert, while it fires

    # -- the Sink protocol ----------------------------------------------------------------------

    async def deliver(self, event: Event, *, reminder: bool) -> None:
        if event.type in _FIRES or event.type in _UPDATES:
            since = self._starts_at(event)
            alert = self.alert(event, starts_at=since, ends_at=self._firing_until())
            async with self._posting:
                await self._post([alert])
            self._open[event.workload] = _Open(event, since)
        elif event.type in _RESOLVES:
            opened = self._open.get(event.workload)
            since = min(opened.since, event.timestamp) if opened else event.timestamp
            alert = self.alert(event, starts_at=since, ends_at=event.timestamp)
            async with self._posting:
                await self._post([alert])
            self._open.pop(event.workload, None)

    async def maintain(self) -> None:
        """Re-post every firing alert each ``resend_interval``, until cancelled."""
        while True:
            await asyncio.sleep(self.settings.resend_interval)
            try:
                async with asyncio.timeout(self.settings.timeout):
                    await self.resend()
            except TimeoutError:
                self.log.warning("alertmanager_resend_failed", error="no answer in time")
            except DeliveryError as exc:  # may quote what the receiver echoed: its secrets
                self.log.warning(
                    "alertmanager_resend_failed", error=redact(str(exc), self.settings)
                )
            except Exception as exc:  # a bug here must not end the re-posting for good
                error = redact(f"{type(exc).__name__}: {exc}", self.settings)
                self.log.warning("alertmanager_resend_failed", error=error)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- the alerts -------------------------------------------------------------------------------

    async def resend(self) -> int:
        """Post every alert firing now once more; returns how many."""
        async with self._posting:
            # Read under the lock: a resolution posted meanwhile is not undone by a re-post.
            alerts = [self._again(event) for event in self._now_firing()]
            if alerts:
                await self._post(alerts)
        return len(alerts)

    def alert(self, event: Event, *, starts_at: datetime, ends_at: datetime) -> dict[str, Any]:
        """The alert for ``event``'s workload, in Alertmanager's v2 shape."""
        where = f"{event.workload} on {event.host}" if event.host else event.workload
        return {
            "labels": {
                "alertname": ALERTNAME,
                "workload": event.workload,
                "host": event.host,
                "severity": self.settings.severity,
            },
            "annotations": {
                "summary": f"healthd workload {where} is unhealthy",
                "description": event.message,
            },
            "startsAt": rfc3339(starts_at),
            "endsAt": rfc3339(ends_at),
        }

    def _now_firing(self) -> list[Event]:
        """The unhealthy event of each workload unhealthy now that this sink covers."""
        return [e for e in self.firing.firing() if self.settings.wants(e.type, e.workload)]

    def _again(self, unhealthy: Event) -> dict[str, Any]:
        """A re-post of ``unhealthy``'s alert: with the latest firing event's message when
        that one belongs to the same episode (delivered after ``unhealthy``)."""
        opened = self._open.get(unhealthy.workload)
        if opened is not None and opened.latest.id >= unhealthy.id:
            shown, since = opened.latest, opened.since
        else:
            shown, since = unhealthy, unhealthy.timestamp
        return self.alert(shown, starts_at=since, ends_at=self._firing_until())

    def _starts_at(self, event: Event) -> datetime:
        """When the alert ``event`` fires or updates started: an update belongs to the episode
        of its workload's unhealthy event (known from the daemon after a restart too)."""
        if event.type in _FIRES:
            return event.timestamp
        for unhealthy in self.firing.firing():
            if unhealthy.workload == event.workload and unhealthy.id <= event.id:
                return min(unhealthy.timestamp, event.timestamp)
        opened = self._open.get(event.workload)  # delivered late: the workload is fine by now
        return min(opened.since, event.timestamp) if opened else event.timestamp

    def _firing_until(self) -> datetime:
        return datetime.now(UTC) + timedelta(
            seconds=ENDS_AFTER_RESENDS * self.settings.resend_interval
        )

    # -- HTTP -------------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = new_client(self.settings.timeout)
        return self._client

    async def _post(self, alerts: list[dict[str, Any]]) -> None:
        headers = {"User-Agent": f"healthd/{__version__}", **self.settings.headers}
        headers["Content-Type"] = "application/json"
        body = json.dumps(alerts, separators=(",", ":"), ensure_ascii=False).encode()
        url = self.endpoint
        try:
            async with self._http().stream("POST", url, content=body, headers=headers) as answer:
                status = answer.status_code
                if 200 <= status < 300:
                    return
                start = await read_start(answer)
        except httpx.TransportError as exc:  # connect, read, write, timeout, protocol
            raise DeliveryError(f"POST {public_url(url)}: {describe(exc)}") from None
        # Alertmanager explains a 400 in the body, as a JSON string: keep it readable.
        text = start.decode("utf-8", "replace").strip()
        with contextlib.suppress(ValueError):
            decoded = json.loads(text)
            if isinstance(decoded, str):
                text = decoded
            elif isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
                text = decoded["message"]
        message = f"POST {public_url(url)}: HTTP {status} {answer.reason_phrase}".rstrip()
        if text:
            message += f": {text[:BODY_IN_ERROR]}"
        raise DeliveryError(message, permanent=not (status == 429 or status >= 500))
