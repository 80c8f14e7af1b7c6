"""The journal and the sinks as the daemon runs them: commit, deliver, remind, prune.

It is an ``EventSink`` on the bus (after the journal has given each event its id) so that it
knows, per workload, the event that made it unhealthy: reminders (``repeat_interval``) and
Alertmanager's re-posting ask it what is firing now.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

from healthd.config.daemon_file import DaemonFile, EventsSettings
from healthd.config.sinks import SinkSettings
from healthd.logs import Logger
from healthd.model import Event, EventType, State, WorkloadStatus
from healthd.sinks import Sink, make_sink
from healthd.sinks.dispatch import Dispatcher
from healthd.store.journal import FILENAME, Journal, JournalError, Route
from healthd.store.state_files import OPEN_TO_LOCAL_USERS

PRUNE_EVERY = 600.0
PRUNE_CHECK = 10.0
STOP_GRACE = 2.0  # seconds the sinks get at a stop to deliver what is pending
REMIND_EVERY_AT_MOST = 30.0
FIRING_STATES = (State.UNHEALTHY, State.RESTARTING, State.GAVE_UP)
_TURNS_UNHEALTHY = (EventType.UNHEALTHY,)
_TURNS_HEALTHY = (EventType.HEALTHY,)


def _filter(settings: SinkSettings) -> Callable[[Event], bool]:
    def wants(event: Event) -> bool:
        return settings.wants(event.type, event.workload)

    return wants


class Notifier:
    def __init__(
        self,
        journal: Journal,
        settings: EventsSettings,
        log: Logger,
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.log = log
        self.sinks: list[Sink] = []
        self.dispatchers: dict[str, Dispatcher] = {}
        self.statuses: Callable[[], dict[str, WorkloadStatus]] = dict
        self._unhealthy: dict[str, Event] = {}  # workload -> the event that made it so
        self._tasks: list[asyncio.Task[None]] = []
        # (sink, workload) -> (event id, time.monotonic() of its last reminder or, before
        # the first, of the event): reminders keep their pace when the wall clock jumps.
        self._reminded: dict[tuple[str, str], tuple[int, float]] = {}

    def add_sink(self, sink: Sink) -> None:
        settings = sink.settings
        self.sinks.append(sink)
        self.dispatchers[settings.name] = Dispatcher(sink, self.journal, self.log)
        self.journal.routes.append(Route(settings.name, _filter(settings)))

    # -- EventSink ----------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        if event.type in _TURNS_UNHEALTHY:
            self._unhealthy[event.workload] = event
        elif event.type in _TURNS_HEALTHY:
            self._unhealthy.pop(event.workload, None)

    def firing(self) -> list[Event]:
        """For each workload unhealthy now (and not paused), the event that made it so."""
        statuses = self.statuses()
        out = []
        for name, event in self._unhealthy.items():
            status = statuses.get(name)
            if status is not None and status.state in FIRING_STATES and not status.paused:
                out.append(event)
        return out

    # -- running ------------------------------------------------------------------------------

    def open(self) -> None:
        """Open events.db; one that is not a database is moved aside, loudly, and a new one
        started: monitoring must not stop over it."""
        try:
            self.journal.open()
        except JournalError as exc:
            aside = self.journal.quarantine()
            self.log.error(
                "event_journal_unusable",
                error=str(exc),
                moved_to=str(aside),
                consequence="a new event journal is started; undelivered events are in the old",
            )
            self.journal.open()
        self.journal.on_commit(self._wake_dispatchers)

    async def start(self, statuses: Callable[[], dict[str, WorkloadStatus]]) -> None:
        self.statuses = statuses
        await self._recall_unhealthy()
        gone = await self.journal.call(self.journal.abandon_other_sinks, list(self.dispatchers))
        for removed, count in gone.items():
            self.log.warning(
                "deliveries_abandoned",
                sink=removed,
                pending=count,
                reason="the sink is no longer in the daemon config; marked expired",
            )
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._commit(), name="journal"))
        self._tasks.append(loop.create_task(self._prune(), name="journal-prune"))
        for sink in self.sinks:
            name = sink.settings.name
            self._tasks.append(loop.create_task(self.dispatchers[name].run(), name=f"sink-{name}"))
            self._tasks.append(loop.create_task(sink.maintain(), name=f"sink-{name}-maintain"))
            if sink.settings.repeat_interval > 0:
                self._tasks.append(loop.create_task(self._remind(sink), name=f"sink-{name}-remind"))

    async def stop(self) -> None:
        """Commit every event published so far, give the sinks ``STOP_GRACE`` to deliver them
        (daemon_stopping included), then stop delivering: what is still pending, or was cut
        short, is delivered after the next start."""
        if self.dispatchers and self._tasks:
            with contextlib.suppress(Exception):
                await self.journal.flush()
            for dispatcher in self.dispatchers.values():
                dispatcher.idle.clear()
                dispatcher.wake.set()
            waits = [asyncio.ensure_future(d.idle.wait()) for d in self.dispatchers.values()]
            await asyncio.wait(waits, timeout=STOP_GRACE)
            for waiting in waits:
                waiting.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.journal.flush_sync()
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                await sink.close()
        self.journal.close()

    async def _commit(self) -> None:
        """The journal's commits, until cancelled; one that fails (a full disk) keeps its events
        queued and is tried again by the journal, logged once per episode (``Journal.run``)."""
        await self.journal.run()

    def _wake_dispatchers(self, _batch: list[Event]) -> None:
        for dispatcher in self.dispatchers.values():
            dispatcher.wake.set()

    async def _recall_unhealthy(self) -> None:
        """After a daemon restart: the unhealthy event of each workload still unhealthy."""
        for name, status in self.statuses().items():
            if status.state in FIRING_STATES and name not in self._unhealthy:
                found = await self.journal.call(
                    self.journal.last_event_of, name, [EventType.UNHEALTHY.value]
                )
                if found is not None:
                    self._unhealthy[name] = found

    async def _remind(self, sink: Sink) -> None:
        """While a workload stays unhealthy, deliver its unhealthy event again every
        ``repeat_interval`` (marked as a reminder)."""
        settings = sink.settings
        every = settings.repeat_interval
        while True:
            await asyncio.sleep(min(every / 4, REMIND_EVERY_AT_MOST))
            now, wall = time.monotonic(), time.time()
            added = False
            for event in self.firing():
                if (
                    not settings.wants(event.type, event.workload)
                    or event.id > self.journal.committed_id
                ):
                    continue
                key = (settings.name, event.workload)
                # A workload unhealthy again is first reminded of an interval after its new
                # unhealthy event. The event's age comes from the wall clock once (it may
                # predate this run), bounded by the interval; from then on the monotonic.
                last_id, last = self._reminded.get(key, (0, 0.0))
                if last_id != event.id:
                    age = min(max(wall - event.timestamp.timestamp(), 0.0), every)
                    last = now - age
                    self._reminded[key] = (event.id, last)
                if now - last >= every:
                    try:
                        await self.journal.call(self.journal.add_reminder, settings.name, event.id)
                    except Exception as exc:  # a full disk: the next round tries again
                        self.log.error(
                            "reminder_failed", sink=settings.name, error=f"{exc}", event_id=event.id
                        )
                        continue
                    self._reminded[key] = (event.id, now)
                    added = True
            if added:
                self.dispatchers[settings.name].wake.set()

    async def _prune(self) -> None:
        """Every ``PRUNE_EVERY``, or sooner when a tenth of ``max_count`` events came in since
        the last prune: thousands of failing checks a second would otherwise grow the journal
        by millions of rows between two prunes."""
        pruned_at, pruned_id = time.monotonic(), self.journal.committed_id
        surge = max(1000, self.settings.max_count // 10)
        while True:
            await asyncio.sleep(PRUNE_CHECK)
            due = time.monotonic() - pruned_at >= PRUNE_EVERY
            if not due and self.journal.committed_id - pruned_id < surge:
                continue
            pruned_at, pruned_id = time.monotonic(), self.journal.committed_id
            try:
                gone = await self.journal.call(
                    self.journal.prune, self.settings.max_age, self.settings.max_count
                )
            except Exception as exc:  # a full disk: try again later, say so
                self.log.error("event_journal_prune_failed", error=str(exc))
                continue
            if gone:
                self.log.info("event_journal_pruned", events=gone)


def build_notifier(
    daemon_file: DaemonFile, status_dir: Path, log: Logger, *, mode: int = OPEN_TO_LOCAL_USERS
) -> Notifier:
    """The journal in ``status_dir`` and a sink for each of the daemon config's ``sinks``;
    ``mode``: events.db's (see store/state_files.py)."""
    journal = Journal(status_dir / FILENAME, host=socket.gethostname(), log=log, mode=mode)
    notifier = Notifier(journal, daemon_file.events, log)
    for settings in daemon_file.sinks:
        notifier.add_sink(make_sink(settings, log, notifier))
    return notifier
