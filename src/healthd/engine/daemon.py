"""The daemon: load configs and saved status, schedule every workload, save, stop cleanly.

Stopping: the first request stops scheduling and lets checks and restarts in flight finish
within ``stop_grace``; a second request (or the grace running out) cancels them. Status is then
saved one last time.

Operations for the API and CLI: pause and resume (maintenance), check now, reload (SIGHUP
too; what changes is planned in ``reload.py``). Saving is ``persist.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from healthd.actions import Actuator, CommandActuator
from healthd.config.daemon import DaemonSettings
from healthd.config.loader import LoadResult, load_dir
from healthd.config.workload import WorkloadConfig
from healthd.engine.history import CheckHistory
from healthd.engine.persist import DAEMON_FILENAME, StatusWriter
from healthd.engine.policy import PolicySettings, WorkloadPolicy
from healthd.engine.reload import ReloadReport, broken_names, plan_reload
from healthd.engine.runner import WorkloadRunner
from healthd.engine.scheduler import Scheduler, Uniform
from healthd.errors import NotMonitored, Problem, StatusFileError, UnknownWorkload
from healthd.events import EventBus
from healthd.logs import Logger
from healthd.model import CheckResult, Clock, Event, EventType, State, SystemClock, WorkloadStatus
from healthd.resolve import MachinectlResolver, Resolver
from healthd.store.atomic import remove_stale_temps
from healthd.store.status import StatusStore, format_time

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
    ) -> None:
        self.settings = settings
        self.notifier = notifier
        self.bus = bus
        self.log = log
        self.clock = clock or SystemClock()
        self.resolver = resolver or MachinectlResolver(settings.resolve_timeout)
        self.actuator = actuator or CommandActuator(
            settings.unit_template, settings.restart_timeout
        )
        self.rng = rng
        self.store = StatusStore(settings.status_dir)
        self.statuses: dict[str, WorkloadStatus] = {}
        self.configs: dict[str, WorkloadConfig] = {}
        self.scheduler = Scheduler(
            log=log,
            exec_limit=settings.exec_in_flight,
            lag_warning=settings.lag_warning,
            rng=self.rng,
        )
        self.loaded = LoadResult()
        self.started = asyncio.Event()  # set once every workload is scheduled
        self.started_at = datetime.now(UTC)
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
        self.histories: dict[str, CheckHistory] = {}
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[object]] = set()
        self.api_endpoints: dict[str, str] = {}  # where the API listens, for the CLI

    @property
    def runners(self) -> dict[str, WorkloadRunner]:
        return self.scheduler.runners

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
        task = asyncio.get_running_loop().create_task(self.reload())
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
        try:
            await self._stop.wait()
            self.log.info("daemon_stopping", in_flight=self.scheduler.busy)
            self._daemon_event(EventType.DAEMON_STOPPING, "healthd is stopping")
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
            self.log.info("daemon_stopped")

    def _remove_stale_temps(self) -> None:
        """What a kill -9 in the middle of a save left beside the status files."""
        for path in (self.store.path, self.settings.status_dir / DAEMON_FILENAME):
            removed = remove_stale_temps(path)
            if removed:
                self.log.info("stale_temp_files_removed", files=",".join(sorted(removed)))

    def load(self) -> None:
        self.loaded = load_dir(self.settings.config_dir, strict_modes=self.settings.strict_modes)
        self._report_problems(self.loaded.problems)
        try:
            saved = self.store.read()
        except StatusFileError as exc:
            saved = self.store.salvage()  # before it moves: its whole entries are kept
            try:
                aside = str(self.store.quarantine())
            except OSError as move_exc:
                aside = f"(could not move it aside: {move_exc})"
            self.log.error(
                "status_file_unusable",
                error=str(exc),
                moved_to=aside,
                kept=",".join(sorted(saved)),
                consequence=f"the {len(saved)} whole entries are kept; other counters start "
                "from zero",
            )
        self.configs = dict(self.loaded.configs)
        # Which file each workload came from matters while loading, not while running: a
        # Path per workload is a quarter of a megabyte at 1,000 workloads.
        self.loaded.files.clear()
        for name, cfg in self.configs.items():
            status = saved.pop(name, None) or WorkloadStatus(workload=name)
            self.statuses[name] = status
            runner = self._runner_for(cfg, status)
            if runner is not None:
                self.scheduler.add(runner)
        # Keep the saved status (and restart budget) of a workload whose file is broken now.
        broken = broken_names(self.loaded)
        dir_unreadable = self._dir_unreadable(self.loaded)
        for name, status in saved.items():
            if dir_unreadable or name in broken:
                status.state = State.CONFIG_ERROR
                status.healthy = False
                self.statuses[name] = status

    def _runner_for(
        self, cfg: WorkloadConfig, status: WorkloadStatus, policy: WorkloadPolicy | None = None
    ) -> WorkloadRunner | None:
        """The runner of an enabled workload (None for a disabled one, marked so). A policy
        passed in (a reload) keeps its verdict and restart pacing under the new settings."""
        name = cfg.workload
        if not cfg.enabled:
            status.state = State.DISABLED
            status.healthy = False
            self.histories.pop(name, None)
            return None
        effective = cfg.with_defaults()
        settings = PolicySettings(
            effective.retries,
            effective.auto_restart,
            effective.max_restarts,
            effective.restart_delay,
        )
        if policy is None:
            policy = WorkloadPolicy(settings, status, self.clock)
        else:
            policy.settings = settings
        history = self.histories.get(name)
        if history is None:
            history = self.histories[name] = CheckHistory()
        return WorkloadRunner(
            effective,
            policy,
            resolver=self.resolver,
            actuator=self.actuator,
            bus=self.bus,
            clock=self.clock,
            log=self.log,
            address_ttl=self.settings.address_ttl,
            on_change=self._changed,
            history=history,
        )

    def _dir_unreadable(self, loaded: LoadResult) -> bool:
        return any(Path(p.file) == self.settings.config_dir for p in loaded.problems)

    # -- operations (API and CLI) -----------------------------------------------------------

    def runner(self, name: str) -> WorkloadRunner:
        """The runner of a monitored workload; raises UnknownWorkload or NotMonitored."""
        runner = self.runners.get(name)
        if runner is not None:
            return runner
        status = self.statuses.get(name)
        if status is None:
            raise UnknownWorkload(name)
        raise NotMonitored(name, status.state.value)

    def pause(self, name: str, reason: str = "") -> WorkloadStatus:
        runner = self.runner(name)
        was = runner.policy.status.paused
        runner.policy.pause(reason)
        status = runner.policy.status
        if not was:
            self.log.info("workload_paused", workload=name, reason=reason)
            message = f"paused for maintenance: {reason}" if reason else "paused for maintenance"
            self.bus.publish(
                Event(
                    EventType.PAUSED,
                    name,
                    self.clock.now(),
                    message,
                    state_from=status.state,
                    state_to=State.PAUSED,
                    details={"reason": reason},
                )
            )
        self._changed(name, True)
        return status

    def resume(self, name: str) -> WorkloadStatus:
        runner = self.runner(name)
        if runner.policy.status.paused:
            runner.policy.resume()
            self.log.info("workload_resumed", workload=name)
            self.bus.publish(
                Event(
                    EventType.RESUMED,
                    name,
                    self.clock.now(),
                    "maintenance ended; checked now",
                    state_from=State.PAUSED,
                    state_to=runner.policy.status.state,
                )
            )
            self._changed(name, True)
            # Judge the workload now rather than an interval from now.
            runner.check_now().add_done_callback(_ignore_outcome)
        return runner.policy.status

    async def check_now(self, name: str) -> CheckResult:
        return await self.runner(name).check_now()

    async def reload(self) -> ReloadReport:
        """Re-read the config dir. All or nothing per workload: a file that does not load now
        leaves its workload running on the config it had, and is reported."""
        async with self._reload_lock:
            loaded = await asyncio.to_thread(
                load_dir, self.settings.config_dir, strict_modes=self.settings.strict_modes
            )
            report = self._apply(loaded)
        self.log.info(
            "config_reloaded",
            added=len(report.added),
            removed=len(report.removed),
            changed=len(report.changed),
            unchanged=report.unchanged,
            kept=len(report.kept),
            config_errors=len(report.problems),
        )
        self._report_problems(report.problems)
        return report

    def _report_problems(self, problems: list[Problem]) -> None:
        for problem in problems:
            self.log.error("config_error", problem=str(problem))
            workload = Path(problem.file).name.rsplit(".", 1)[0]
            self.bus.publish(
                Event(
                    EventType.CONFIG_ERROR,
                    workload if Path(problem.file) != self.settings.config_dir else "",
                    self.clock.now(),
                    str(problem),
                    details={"file": problem.file, "line": problem.line, "field": problem.field},
                )
            )

    def _daemon_event(self, kind: EventType, message: str) -> None:
        self.bus.publish(Event(kind, "", self.clock.now(), message, details={"pid": os.getpid()}))

    def _apply(self, loaded: LoadResult) -> ReloadReport:
        loaded.files.clear()
        dir_unreadable = self._dir_unreadable(loaded)
        report = plan_reload(self.configs, loaded, dir_unreadable=dir_unreadable)
        self.loaded.problems = list(loaded.problems)
        if dir_unreadable:
            return report
        new_runners: list[WorkloadRunner] = []
        for name in (*report.added, *report.changed):
            cfg = loaded.configs[name]
            status = self.statuses.get(name)
            if status is None:
                status = self.statuses[name] = WorkloadStatus(workload=name)
            elif status.state is State.CONFIG_ERROR:
                status.state = State.STARTING
            old_runner = self.runners.get(name)
            self.configs[name] = cfg
            runner = self._runner_for(cfg, status, old_runner.policy if old_runner else None)
            if runner is not None:
                new_runners.append(runner)
            self._changed(name, True)
        broken = broken_names(loaded)
        for name in report.removed:
            del self.configs[name]
        # Left broken at start (config_error, never configured here) and now gone: removed too.
        stale = [n for n in self.statuses if n not in self.configs and n not in broken]
        report.removed.extend(n for n in sorted(stale) if n not in report.removed)
        for name in stale:
            del self.statuses[name]
            self.histories.pop(name, None)
        self.scheduler.replace(
            new_runners,
            [*report.changed, *report.removed],
            self.settings.first_check_within,
        )
        self.loaded.configs = dict(self.configs)
        self.writer.save_soon()
        return report

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
        self.writer.changed(workload, urgent)

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


def _ignore_outcome(future: asyncio.Future[CheckResult]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never seen


_ENCODE_SLICE = 500


def raise_open_file_limit() -> None:
    """Kept-alive connections take a descriptor per workload: allow as many as permitted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
