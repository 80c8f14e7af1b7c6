"""The daemon: load configs and saved status, schedule every workload, save, stop cleanly.

Stopping: the first request stops scheduling and lets checks and restarts in flight finish
within ``stop_grace``; a second request (or the grace running out) cancels them. Status is then
saved one last time.

Saving: statuses.json is rewritten on every state change (coalesced) and every flush interval
while anything changed, re-encoding only the entries that changed; daemon.json beside it
says how the scheduler keeps up (lag histogram, checks run, whether it is behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from healthd.actions import Actuator, CommandActuator
from healthd.config.daemon import DaemonSettings
from healthd.config.loader import LoadResult, load_dir
from healthd.config.workload import WorkloadConfig
from healthd.engine.policy import PolicySettings, WorkloadPolicy
from healthd.engine.scheduler import Scheduler, Uniform, WorkloadRunner
from healthd.errors import StatusFileError
from healthd.events import EventBus
from healthd.logs import Logger
from healthd.model import Clock, State, SystemClock, WorkloadStatus
from healthd.resolve import MachinectlResolver, Resolver
from healthd.store.atomic import write_atomic
from healthd.store.status import StatusEncoder, StatusStore, format_time


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
    ) -> None:
        self.settings = settings
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
        self._save_now = asyncio.Event()
        self._changed_names: set[str] = set()
        self._encoder = StatusEncoder()
        self._encoded_all = False
        self._write_lock = threading.Lock()
        self._snapshots = 0  # numbers snapshots, so an older one never overwrites a newer one
        self._written = 0

    @property
    def runners(self) -> dict[str, WorkloadRunner]:
        return self.scheduler.runners

    # -- control --------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First request drains; a second forces."""
        self.scheduler.stop_requested = True
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
        raise_open_file_limit()
        self.load()
        # What load built lives as long as the daemon: keep the collector from walking it again
        # and again (at thousands of workloads a full collection takes milliseconds).
        gc.freeze()
        self.scheduler.start(self.settings.first_check_within)
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
            self.log.info("daemon_stopping", in_flight=self.scheduler.busy)
            await self._drain()
        finally:
            self.scheduler.stop()
            self.scheduler.abandon()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            for runner in self.runners.values():
                runner.probe.close()
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
        # Which file each workload came from matters while loading, not while running: a
        # Path per workload is a quarter of a megabyte at 1,000 workloads.
        self.loaded.files.clear()
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
            self.scheduler.add(
                WorkloadRunner(
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
            )
        # Keep the saved status (and restart budget) of a workload whose file is broken now.
        broken = {Path(p.file).name.rsplit(".", 1)[0] for p in self.loaded.problems}
        dir_unreadable = any(Path(p.file) == self.settings.config_dir for p in self.loaded.problems)
        for name, status in saved.items():
            if dir_unreadable or name in broken:
                status.state = State.CONFIG_ERROR
                status.healthy = False
                self.statuses[name] = status

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
        self._changed_names.add(workload)
        if urgent:
            self._save_now.set()

    async def _write_statuses(self) -> None:
        """Save on every state change (coalesced) and every flush interval while dirty."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.status_flush_interval):
                    await self._save_now.wait()
            self._save_now.clear()
            self.scheduler.review()
            if not self._changed_names and self._encoded_all:
                continue
            data = await self._encode_in_slices()
            summary = self._daemon_summary()
            try:
                await asyncio.to_thread(self._write_files, self._snapshots, data, summary)
            except OSError as exc:
                self._encoded_all = False  # what failed to save is saved at the next tick
                self.log.error("status_save_failed", path=str(self.store.path), error=str(exc))
            del data, summary  # the whole file, held until the next flush otherwise

    async def _encode_in_slices(self) -> bytes:
        """Encode what changed a slice at a time, letting checks run in between: at 10,000
        workloads encoding everything at once would hold the loop for ~100 ms. Each entry is
        consistent; entries may be some milliseconds apart."""
        names = self._take_changed()
        for start in range(0, len(names), _ENCODE_SLICE):
            self._encoder.update(self.statuses, names[start : start + _ENCODE_SLICE])
            await asyncio.sleep(0)
        self._encoded_all = True
        return self._encoder.render(self.statuses)

    def _encode(self) -> bytes:
        """All that changed at once (start and stop, when no check is waiting for the loop)."""
        self._encoder.update(self.statuses, self._take_changed())
        self._encoded_all = True
        return self._encoder.render(self.statuses)

    def _take_changed(self) -> list[str]:
        """The workloads to encode for a new snapshot: those changed, or all after a gap."""
        self._snapshots += 1
        names = list(self._changed_names if self._encoded_all else self.statuses)
        self._changed_names = set()
        self._encoded_all = False  # until every name is in (a cancelled writer leaves gaps)
        return names

    def _daemon_summary(self) -> bytes:
        summary = {
            "pid": os.getpid(),
            "started_at": format_time(self.started_at),
            "updated_at": format_time(datetime.now(UTC)),
            "workloads": len(self.runners),
            "checks_total": self.scheduler.checks_total,
            "scheduler": self.scheduler.to_json(),
        }
        return json.dumps(summary, indent=1).encode() + b"\n"

    def _write_files(self, snapshot: int, statuses: bytes, summary: bytes) -> None:
        with self._write_lock:
            if snapshot < self._written:
                return  # a writer thread outlived its task; the final save is newer
            self.store.write_bytes(statuses)
            write_atomic(self.settings.status_dir / DAEMON_FILENAME, summary)
            self._written = snapshot

    def _save_sync(self) -> None:
        try:
            data = self._encode()
            self._write_files(self._snapshots, data, self._daemon_summary())
        except OSError as exc:
            self.log.error("status_save_failed", path=str(self.store.path), error=str(exc))


DAEMON_FILENAME = "daemon.json"
_ENCODE_SLICE = 500


def raise_open_file_limit() -> None:
    """Kept-alive connections take a descriptor per workload: allow as many as permitted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
