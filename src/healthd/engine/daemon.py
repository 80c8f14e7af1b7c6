"""The daemon: load configs and saved status, run one loop per workload, save, stop cleanly.

Stopping: the first request stops scheduling, cancels idle loops and lets checks and restarts
in flight finish within ``stop_grace``; a second request (or the grace running out) cancels
them. Status is then saved one last time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from healthd.actions import Actuator, CommandActuator
from healthd.config.daemon import DaemonSettings
from healthd.config.loader import LoadResult, load_dir
from healthd.config.workload import WorkloadConfig
from healthd.engine.policy import PolicySettings, WorkloadPolicy
from healthd.engine.scheduler import WorkloadRunner
from healthd.errors import StatusFileError
from healthd.events import EventBus
from healthd.logs import Logger
from healthd.model import Clock, State, SystemClock, WorkloadStatus
from healthd.resolve import MachinectlResolver, Resolver
from healthd.store.status import StatusStore, encode


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
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.log = log
        self.clock = clock or SystemClock()
        self.resolver = resolver or MachinectlResolver(settings.resolve_timeout)
        self.actuator = actuator or CommandActuator(
            settings.unit_template, settings.restart_timeout
        )
        self.rng = rng or random.Random()
        self.store = StatusStore(settings.status_dir)
        self.statuses: dict[str, WorkloadStatus] = {}
        self.configs: dict[str, WorkloadConfig] = {}
        self.runners: dict[str, WorkloadRunner] = {}
        self.loaded = LoadResult()
        self.started = asyncio.Event()  # set once every loop is scheduled
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._save_now = asyncio.Event()
        self._dirty = False

    # -- control --------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First request drains; a second forces."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT call ``request_stop`` while the daemon runs."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        forced = self._stop.is_set()
        self.log.warning(
            "signal", signal=sig.name, action="force stop" if forced else "drain and stop"
        )
        self.request_stop()

    # -- run ------------------------------------------------------------------------------

    async def run(self) -> None:
        self.load()
        tasks: dict[str, asyncio.Task[None]] = {}
        window = self.settings.first_check_within
        for name, runner in self.runners.items():
            delay = self.rng.uniform(0, min(window, runner.cfg.interval))
            tasks[name] = asyncio.create_task(runner.run(delay), name=f"check:{name}")
        writer = asyncio.create_task(self._write_statuses(), name="status-writer")
        self._save_sync()
        self.log.info(
            "daemon_started",
            workloads=len(self.runners),
            disabled=sum(not c.enabled for c in self.configs.values()),
            config_errors=len(self.loaded.problems),
            config_dir=str(self.settings.config_dir),
            status_dir=str(self.settings.status_dir),
        )
        self.started.set()
        try:
            await self._stop.wait()
            self.log.info("daemon_stopping", in_flight=sum(r.busy for r in self.runners.values()))
            await self._drain(tasks)
        finally:
            writer.cancel()
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(writer, *tasks.values(), return_exceptions=True)
            self._save_sync()
            self.log.info("daemon_stopped")

    def load(self) -> None:
        self.loaded = load_dir(self.settings.config_dir)
        for problem in self.loaded.problems:
            self.log.error("config_error", problem=str(problem))
        try:
            saved = self.store.read()
        except StatusFileError as exc:
            saved = {}
            try:
                aside = str(self.store.quarantine())
            except OSError as move_exc:
                aside = f"(could not move it aside: {move_exc})"
            self.log.error(
                "status_file_unusable",
                error=str(exc),
                moved_to=aside,
                consequence="counters start from zero",
            )
        self.configs = dict(self.loaded.configs)
        for name, cfg in self.configs.items():
            status = saved.pop(name, None) or WorkloadStatus(workload=name)
            self.statuses[name] = status
            if not cfg.enabled:
                status.state = State.DISABLED
                status.healthy = False
                continue
            effective = cfg.with_defaults()
            policy = WorkloadPolicy(
                PolicySettings(
                    effective.retries,
                    effective.auto_restart,
                    effective.max_restarts,
                    effective.restart_delay,
                ),
                status,
                self.clock,
            )
            self.runners[name] = WorkloadRunner(
                effective,
                policy,
                resolver=self.resolver,
                actuator=self.actuator,
                bus=self.bus,
                clock=self.clock,
                log=self.log,
                address_ttl=self.settings.address_ttl,
                on_change=self._changed,
            )
        # Keep the saved status (and restart budget) of a workload whose file is broken now.
        broken = {Path(p.file).name.rsplit(".", 1)[0] for p in self.loaded.problems}
        dir_unreadable = any(Path(p.file) == self.settings.config_dir for p in self.loaded.problems)
        for name, status in saved.items():
            if dir_unreadable or name in broken:
                status.state = State.CONFIG_ERROR
                status.healthy = False
                self.statuses[name] = status

    async def _drain(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        busy = []
        for name, runner in self.runners.items():
            runner.stopping = True
            if runner.busy:
                busy.append(tasks[name])
            else:
                tasks[name].cancel()
        if not busy:
            return
        force = asyncio.create_task(self._force.wait())
        pending: set[asyncio.Task[Any]] = set(busy)
        try:
            async with asyncio.timeout(self.settings.stop_grace):
                while pending and not force.done():
                    _, still = await asyncio.wait(
                        pending | {force}, return_when=asyncio.FIRST_COMPLETED
                    )
                    pending = {t for t in still if t is not force}
        except TimeoutError:
            pass
        finally:
            force.cancel()
        unfinished = [t for t in busy if not t.done()]
        if unfinished:
            self.log.warning("stop_forced", cancelled=len(unfinished))

    # -- status persistence ---------------------------------------------------------------

    def _changed(self, urgent: bool) -> None:
        self._dirty = True
        if urgent:
            self._save_now.set()

    async def _write_statuses(self) -> None:
        """Save on every state change (coalesced) and every flush interval while dirty."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.status_flush_interval):
                    await self._save_now.wait()
            self._save_now.clear()
            if not self._dirty:
                continue
            self._dirty = False
            data = encode(self.statuses.values())  # snapshot on the loop: consistent
            try:
                await asyncio.to_thread(self.store.write_bytes, data)
            except OSError as exc:
                self._dirty = True  # try again at the next tick
                self.log.error("status_save_failed", path=str(self.store.path), error=str(exc))

    def _save_sync(self) -> None:
        try:
            self.store.write(self.statuses.values())
        except OSError as exc:
            self.log.error("status_save_failed", path=str(self.store.path), error=str(exc))
