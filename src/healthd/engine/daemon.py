"""The daemon: wire the parts, schedule every workload, save, stop cleanly.

Stopping: the first request stops scheduling and lets checks and restarts in flight finish
within ``stop_grace``; a second request (or the grace running out) cancels them. Status is then
saved one last time.

Operations for the API and CLI: pause and resume (maintenance), check now (``operations.py``),
reload (SIGHUP too; ``workloads.py``, which loads the config dir). Saving is ``persist.py``'s.
Changes in the config dir are reloaded by themselves (``watch.py``) unless watching is off.

Under systemd (``Type=notify``, ``systemd.py``): READY=1 once every workload is scheduled (the
API listens by then), RELOADING=1 and READY=1 around each reload, STOPPING=1 at stop, and
watchdog pets from the scheduler's timer wheel.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from healthd.actions import Actuator, CommandActuator
from healthd.config.daemon import DaemonSettings
from healthd.config.loader import LoadResult
from healthd.config.workload import WorkloadConfig
from healthd.engine.history import CheckHistory
from healthd.engine.operations import Operations
from healthd.engine.persist import DAEMON_FILENAME, StatusWriter
from healthd.engine.reload import ReloadReport
from healthd.engine.runner import WorkloadRunner
from healthd.engine.scheduler import Scheduler, Uniform
from healthd.engine.watch import ConfigWatcher, shown
from healthd.engine.workloads import Workloads
from healthd.events import EventBus
from healthd.logs import Logger
from healthd.model import CheckResult, Clock, Event, EventType, SystemClock, WorkloadStatus
from healthd.resolve import MachinectlResolver, Resolver
from healthd.store.atomic import remove_stale_temps
from healthd.store.state_files import status_dir_problem
from healthd.store.status import StatusStore, format_time
from healthd.systemd import SystemdNotifier

if TYPE_CHECKING:
    from healthd.sinks.notifier import Notifier


class Daemon:
    def __init__(
        self,
        settings: DaemonSettings,
        *,
        bus: EventBus,
        log: Logger,
        clock: Clock | None = None,
        resolver: Resolver | None = None,
        actuator: Actuator | None = None,
        rng: Uniform | None = None,
        notifier: Notifier | None = None,
        systemd: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.notifier = notifier
        self.systemd = systemd
        self.bus = bus
        self.log = log
        self.clock = clock or SystemClock()
        self.resolver = resolver or MachinectlResolver(settings.resolve_timeout)
        self.actuator = actuator or CommandActuator(
            settings.unit_template, settings.restart_timeout
        )
        self.rng = rng
        self.store = StatusStore(settings.status_dir, settings.state_file_mode, log)
        self.scheduler = Scheduler(
            log=log,
            exec_limit=settings.exec_in_flight,
            lag_warning=settings.lag_warning,
            rng=self.rng,
        )
        self.workloads = Workloads(
            settings,
            store=self.store,
            scheduler=self.scheduler,
            bus=bus,
            log=log,
            clock=self.clock,
            resolver=self.resolver,
            actuator=self.actuator,
            on_change=self._changed,
            save_soon=self._save_soon,
        )
        self.operations = Operations(
            self.workloads, bus=bus, log=log, clock=self.clock, on_change=self._changed
        )
        self.started = asyncio.Event()  # set once every workload is scheduled
        self.started_at = datetime.now(UTC)
        # uptime is measured on this clock: a wall clock set back must not shorten it
        self.started_monotonic = time.monotonic()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self.writer = StatusWriter(
            self.statuses,
            self.store,
            summary=self.summary,
            log=log,
            flush_interval=settings.status_flush_interval,
            on_tick=self.scheduler.review,
        )
        self._background: set[asyncio.Task[object]] = set()
        self.api_endpoints: dict[str, str] = {}  # where the API listens, for the CLI
        # Bumped by every change an API answer must show at once (a state change, a restart,
        # pause, resume, reset, a reload): answers the API keeps for a while are rebuilt then.
        self.generation = 0
        self.watcher: ConfigWatcher | None = None

    @property
    def runners(self) -> dict[str, WorkloadRunner]:
        return self.scheduler.runners

    # The workloads' tables, read by the API and the metrics: owned by ``workloads.py``.

    @property
    def statuses(self) -> dict[str, WorkloadStatus]:
        return self.workloads.statuses

    @property
    def configs(self) -> dict[str, WorkloadConfig]:
        return self.workloads.configs

    @property
    def histories(self) -> dict[str, CheckHistory]:
        return self.workloads.histories

    @property
    def loaded(self) -> LoadResult:
        return self.workloads.loaded

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- control --------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First request drains; a second forces."""
        self.scheduler.stop_requested = True
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    @contextlib.contextmanager
    def capture_signals(self, *, hangup_reloads: bool = True) -> Iterator[None]:
        """SIGTERM and SIGINT call ``request_stop`` while the daemon runs; SIGHUP reloads
        (unless ``hangup_reloads`` is false: then it is left to the caller)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        if hangup_reloads:
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        try:
            yield
        finally:
            for sig in (*signals, *([signal.SIGHUP] if hangup_reloads else [])):
                loop.remove_signal_handler(sig)

    def _on_hangup(self) -> None:
        if not self.started.is_set() or self._stop.is_set():
            return
        self.log.info("signal", signal="SIGHUP", action="reload")
        task = asyncio.get_running_loop().create_task(self.reload(trigger="SIGHUP"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_signal(self, sig: signal.Signals) -> None:
        forced = self._stop.is_set()
        self.log.warning(
            "signal", signal=sig.name, action="force stop" if forced else "drain and stop"
        )
        self.request_stop()

    # -- run ------------------------------------------------------------------------------

    async def run(self) -> None:
        raise_open_file_limit()
        if self.notifier is not None:
            self.notifier.open()
        unsafe = status_dir_problem(self.settings.status_dir)
        if unsafe:
            self.log.warning(
                "status_dir_unsafe",
                dir=str(self.settings.status_dir),
                problem=unsafe,
                consequence="others can plant links or files under the names of the daemon's "
                "files; links found are removed, but one planted between two steps is not",
            )
        if self.settings.watch_config:
            # Armed before the load: a change made while the dir loads is seen, not missed.
            self.watcher = ConfigWatcher(
                self.settings.config_dir,
                self._files_changed,
                self.log,
                quiet=self.settings.watch_quiet,
            )
            self.watcher.arm()
        self.load()
        # What load built lives as long as the daemon: keep the collector from walking it again
        # and again (at thousands of workloads a full collection takes milliseconds).
        gc.freeze()
        self.scheduler.start(self.settings.first_check_within)
        self._remove_stale_temps()
        writer = asyncio.create_task(self.writer.run(), name="status-writer")
        self.writer.save_sync()
        self.log.info(
            "daemon_started",
            workloads=len(self.runners),
            disabled=sum(not c.enabled for c in self.configs.values()),
            config_errors=len(self.loaded.problems),
            config_dir=str(self.settings.config_dir),
            status_dir=str(self.settings.status_dir),
        )
        self._daemon_event(
            EventType.DAEMON_STARTED,
            f"healthd started: {len(self.runners)} workloads monitored, "
            f"{len(self.loaded.problems)} config errors",
        )
        if self.notifier is not None:
            await self.notifier.start(lambda: self.statuses)
        self.started.set()
        if self.watcher is not None:
            self.watcher.start()
        if self.systemd is not None:
            self.systemd.ready(self.status_line())
            if self.systemd.watchdog is not None:
                self.scheduler.start_watchdog(self.systemd.watchdog, self.systemd.pet)
        try:
            await self._stop.wait()
            if self.systemd is not None:
                self.systemd.stopping()
            self.log.info("daemon_stopping", in_flight=self.scheduler.busy)
            self._daemon_event(EventType.DAEMON_STOPPING, "healthd is stopping")
            if self.watcher is not None:
                self.watcher.stop()  # no reload starts while stopping
            await self._drain()
        finally:
            self.scheduler.stop()
            self.scheduler.abandon()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            for runner in self.runners.values():
                runner.probe.close()
            self.writer.save_sync()
            if self.notifier is not None:
                await self.notifier.stop()  # every event published is committed by now
            if self.watcher is not None:
                await self.watcher.close()  # its thread has had the time above to return
            if self.systemd is not None:
                self.systemd.close()
            self.log.info("daemon_stopped")

    def _remove_stale_temps(self) -> None:
        """What a kill -9 in the middle of a save left beside the status files."""
        for path in (self.store.path, self.settings.status_dir / DAEMON_FILENAME):
            removed = remove_stale_temps(path)
            if removed:
                self.log.info("stale_temp_files_removed", files=",".join(sorted(removed)))

    def load(self) -> None:
        self.workloads.load()

    # -- operations (API and CLI) -----------------------------------------------------------

    def runner(self, name: str) -> WorkloadRunner:
        """The runner of a monitored workload; raises UnknownWorkload or NotMonitored."""
        return self.operations.runner(name)

    def pause(self, name: str, reason: str = "") -> WorkloadStatus:
        return self.operations.pause(name, reason)

    def resume(self, name: str) -> WorkloadStatus:
        return self.operations.resume(name)

    async def check_now(self, name: str) -> CheckResult:
        return await self.operations.check_now(name)

    async def reload(self, *, trigger: str = "", files: Sequence[str] = ()) -> ReloadReport:
        """Re-read the config dir (see ``Workloads.reload``). ``trigger`` and ``files`` (what
        the watcher saw change) go into the config_reloaded log line."""
        context = {"trigger": trigger} if trigger else {}
        if files:
            context["files"] = shown(list(files))
        systemd = None if self.stopping else self.systemd  # nothing but STOPPING=1 by then
        if systemd is not None:
            systemd.reloading()
        try:
            return await self.workloads.reload(**context)
        finally:
            if systemd is not None and not self.stopping:
                systemd.ready(self.status_line())

    async def _files_changed(self, files: list[str]) -> None:
        if not self.stopping:
            await self.reload(trigger="watch", files=files)

    def status_line(self) -> str:
        """systemd's STATUS=: what is monitored, what is not."""
        parts = [f"monitoring {len(self.runners)} workloads"]
        disabled = sum(not c.enabled for c in self.configs.values())
        if disabled:
            parts.append(f"{disabled} disabled")
        if self.loaded.problems:
            parts.append(f"{len(self.loaded.problems)} config errors")
        if self.watcher is not None:
            parts.append(f"watching {self.settings.config_dir}")
        return ", ".join(parts)

    def _daemon_event(self, kind: EventType, message: str) -> None:
        self.bus.publish(Event(kind, "", self.clock.now(), message, details={"pid": os.getpid()}))

    async def _drain(self) -> None:
        self.scheduler.stop()
        if not self.scheduler.busy:
            return
        drained = asyncio.create_task(self.scheduler.drained())
        force = asyncio.create_task(self._force.wait())
        try:
            await asyncio.wait(
                {drained, force},
                timeout=self.settings.stop_grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            drained.cancel()
            force.cancel()
        if self.scheduler.busy:
            self.log.warning("stop_forced", cancelled=self.scheduler.abandon())

    # -- status persistence ---------------------------------------------------------------

    def _changed(self, workload: str, urgent: bool) -> None:
        if urgent:
            self.generation += 1
        self.writer.changed(workload, urgent)

    def _save_soon(self) -> None:
        self.generation += 1  # a reload: workloads added, changed or removed
        self.writer.save_soon()

    def summary(self) -> dict[str, object]:
        """daemon.json: how the daemon keeps up, and where its API listens."""
        return {
            "pid": os.getpid(),
            "started_at": format_time(self.started_at),
            "updated_at": format_time(datetime.now(UTC)),
            "workloads": len(self.runners),
            "checks_total": self.scheduler.checks_total,
            "scheduler": self.scheduler.to_json(),
            "api": self.api_endpoints,
        }


def raise_open_file_limit() -> None:
    """Kept-alive connections take a descriptor per workload: allow as many as permitted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
