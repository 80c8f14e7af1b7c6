"""The configured workloads: their configs, statuses and check histories, built from the config
dir and saved status at start and kept in step with the config dir by reload.

Split from the daemon so that what a load or reload changes has one owner; the daemon wires it
to the scheduler, which runs the runners built here, and to the status writer, which is told of
every change through ``on_change`` and ``save_soon``. What a reload changes is planned in
``reload.py``; this applies it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from healthd.actions import Actuator
from healthd.config.daemon import DaemonSettings
from healthd.config.loader import LoadResult, load_dir
from healthd.config.workload import WorkloadConfig
from healthd.engine import dependencies
from healthd.engine.history import CheckHistory
from healthd.engine.policy import DependencyLookup, PolicySettings, WorkloadPolicy
from healthd.engine.reload import ReloadReport, broken_names, plan_reload
from healthd.engine.runner import WorkloadRunner
from healthd.engine.scheduler import Scheduler
from healthd.errors import Problem, StatusFileError
from healthd.events import EventBus
from healthd.logs import Logger
from healthd.model import Clock, Event, EventType, State, WorkloadStatus
from healthd.resolve import Resolver
from healthd.store.status import StatusStore


class Workloads:
    def __init__(
        self,
        settings: DaemonSettings,
        *,
        store: StatusStore,
        scheduler: Scheduler,
        bus: EventBus,
        log: Logger,
        clock: Clock,
        resolver: Resolver,
        actuator: Actuator,
        on_change: Callable[[str, bool], None],
        save_soon: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.bus = bus
        self.log = log
        self.clock = clock
        self.resolver = resolver
        self.actuator = actuator
        self._changed = on_change
        self._save_soon = save_soon
        self.statuses: dict[str, WorkloadStatus] = {}
        self.configs: dict[str, WorkloadConfig] = {}
        self.histories: dict[str, CheckHistory] = {}
        self.loaded = LoadResult()
        self._reload_lock = asyncio.Lock()
        self._cyclic: dict[str, frozenset[str]] = {}  # depends_on edges that close a cycle
        self._announced_problems: set[str] = set()  # config_error events already published

    @property
    def runners(self) -> dict[str, WorkloadRunner]:
        return self.scheduler.runners

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
        self._review_dependencies()
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
        settings = policy_settings(effective)
        lookup = self._dependency_lookup(name) if settings.depends_on else None
        if policy is None:
            policy = WorkloadPolicy(settings, status, self.clock, lookup)
        else:
            policy.configure(settings, lookup)
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

    # -- depends_on --------------------------------------------------------------------------

    def _dependency_lookup(self, name: str) -> DependencyLookup:
        """What ``name``'s policy asks about its dependencies: the status of a monitored one;
        None (holds nothing) for one not monitored or closing a cycle with ``name``."""

        def lookup(dep: str) -> WorkloadStatus | None:
            if dep in self._cyclic.get(name, ()) or dep not in self.runners:
                return None
            return self.statuses.get(dep)

        return lookup

    def _review_dependencies(self) -> None:
        """After every load and reload: find cycles (their dependencies hold nothing, or they
        would hold each other forever) and names not configured (they hold nothing until a
        workload of that name is added); both are logged."""
        report = dependencies.review(
            {name: cfg.depends_on or () for name, cfg in self.configs.items()}
        )
        self._cyclic = report.cyclic
        for cycle in report.cycles:
            self.log.warning(
                "dependency_cycle",
                workloads=",".join(cycle),
                consequence="depends_on between these workloads never holds a restart",
            )
        for name, unknown in sorted(report.missing.items()):
            self.log.warning(
                "dependency_not_configured",
                workload=name,
                depends_on=",".join(unknown),
                consequence="holds no restart until a workload of that name is configured",
            )

    def _dir_unreadable(self, loaded: LoadResult) -> bool:
        return any(Path(p.file) == self.settings.config_dir for p in loaded.problems)

    async def reload(self, **context: str) -> ReloadReport:
        """Re-read the config dir. All or nothing per workload: a file that does not load now
        leaves its workload running on the config it had, and is reported. ``context`` (what
        caused it) leads the log line."""
        async with self._reload_lock:
            loaded = await asyncio.to_thread(
                load_dir, self.settings.config_dir, strict_modes=self.settings.strict_modes
            )
            report = self._apply(loaded)
        self.log.info(
            "config_reloaded",
            **context,
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
        """Log every problem at every load; publish a ``config_error`` event only for a problem
        not announced already: with the config dir watched, every unrelated edit reloads, and
        a file left broken must not page someone again each time. A problem that is fixed and
        comes back is announced again."""
        current = {str(problem) for problem in problems}
        announced, self._announced_problems = self._announced_problems, current
        for problem in problems:
            self.log.error("config_error", problem=str(problem))
            if str(problem) in announced:
                continue
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
        if report.added or report.changed or report.removed:
            self._review_dependencies()
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
        self._save_soon()
        return report


def policy_settings(cfg: WorkloadConfig) -> PolicySettings:
    """The state machine's settings from a config (defaults filled in): what is not set in the
    file gets PolicySettings' default, which is the reference's behaviour."""
    d = PolicySettings()
    backoff_cap = (
        cfg.max_restart_delay if cfg.max_restart_delay is not None else d.max_restart_delay
    )
    return PolicySettings(
        retries=cfg.retries,
        auto_restart=cfg.auto_restart,
        max_restarts=cfg.max_restarts,
        restart_delay=cfg.restart_delay,
        success_threshold=cfg.success_threshold or d.success_threshold,
        start_period=cfg.start_period or d.start_period,
        restart_backoff=bool(cfg.restart_backoff),
        # a restart_delay longer than the default cap is never shortened by backoff
        max_restart_delay=max(backoff_cap, cfg.restart_delay),
        backoff_reset=cfg.backoff_reset or d.backoff_reset,
        restart_window=cfg.restart_window or d.restart_window,
        on_exhausted=cfg.on_exhausted or d.on_exhausted,
        flap_threshold=cfg.flap_threshold or d.flap_threshold,
        flap_window=cfg.flap_window or d.flap_window,
        depends_on=cfg.depends_on or (),
    )
