"""One workload's life in the scheduler: due -> (wait for an exec slot) -> resolve the
address -> probe -> policy -> events -> restart if asked -> due again one interval after the
check (or restart) ended.

Driven by event-loop timers and probe callbacks, not a task: at thousands of checks a second
the objects a task and its awaits make are most of the cost. Checks of one workload never
overlap, and a slow check or a restart of one never delays another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from healthd.actions import Actuator
from healthd.checks import KINDS
from healthd.config.workload import WorkloadConfig
from healthd.engine import certs
from healthd.engine.history import CheckHistory
from healthd.engine.policy import WorkloadPolicy
from healthd.errors import RestartError
from healthd.events import EventBus
from healthd.logs import Logger
from healthd.model import CheckResult, Clock, State
from healthd.resolve import Address, Resolver

if TYPE_CHECKING:
    from healthd.engine.scheduler import Gate, Scheduler, TimerWheel


class WorkloadRunner:
    __slots__ = (
        "_address",
        "_address_expires",
        "_answering",
        "_asked",
        "_due",
        "_log",
        "_loop",
        "_needs_address",
        "_scheduled",
        "_task",
        "actuator",
        "address_ttl",
        "bus",
        "busy",
        "cfg",
        "clock",
        "gate",
        "history",
        "on_change",
        "policy",
        "probe",
        "queued",
        "resolver",
        "retired",
        "scheduler",
        "stopping",
        "wheel",
    )

    def __init__(
        self,
        cfg: WorkloadConfig,
        policy: WorkloadPolicy,
        *,
        resolver: Resolver,
        actuator: Actuator,
        bus: EventBus,
        clock: Clock,
        log: Logger,
        address_ttl: float,
        on_change: Callable[[str, bool], None],
        history: CheckHistory | None = None,
    ) -> None:
        self.cfg = cfg
        self.history = history or CheckHistory()
        self.policy = policy
        self.resolver = resolver
        self.actuator = actuator
        self.bus = bus
        self.clock = clock
        self._log = log  # bound to the workload only when it logs: rare, and memory adds up
        self.address_ttl = address_ttl
        self.on_change = on_change  # (workload, must be saved now) after every result
        self.probe = KINDS[cfg.type].probe(cfg)
        self.scheduler: Scheduler | None = None
        self.wheel: TimerWheel | None = None
        self.gate: Gate | None = None
        self.busy = False  # in a check or restart: stopping lets it finish
        self.queued = False  # waiting at the gate
        self.stopping = False
        self.retired = False  # replaced or removed by a reload: a result in flight is dropped
        self._asked: list[asyncio.Future[CheckResult]] | None = None  # "check now", not begun
        self._answering: list[asyncio.Future[CheckResult]] | None = None  # the check running
        self._loop: asyncio.AbstractEventLoop | None = None  # cached: looking it up costs a syscall
        self._due = 0.0
        self._scheduled = False  # a wake-up is pending on the wheel
        self._task: asyncio.Task[None] | None = None  # an address lookup or a restart
        self._address: Address | None = None
        self._address_expires = 0.0
        self._needs_address = KINDS[cfg.type].needs_address

    @property
    def log(self) -> Logger:
        return self._log.bind(workload=self.cfg.workload)

    # -- schedule ---------------------------------------------------------------------------

    def start(self, delay: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule(delay)

    def stop(self) -> None:
        self.stopping = True
        self.queued = False
        self._scheduled = False

    def retire(self) -> None:
        """Removed or replaced by a reload: never scheduled again; a check in flight ends
        uncounted, a restart in flight still reports its outcome."""
        self.retired = True
        self.stop()
        self._fail_waiters("the workload was reloaded")
        if not self.busy:
            # A kept connection (http keep-alive, a grpc channel) would otherwise stay open
            # until the server drops it, one more per reload that changes the workload.
            self.probe.close()

    def check_now(self) -> asyncio.Future[CheckResult]:
        """The result of a check that begins after this call: the next one, started at once
        unless a check is already running (then right after it). It feeds the policy like any
        other check, so checks of one workload still never overlap."""
        assert self._loop is not None
        future: asyncio.Future[CheckResult] = self._loop.create_future()
        if self.stopping:
            future.set_exception(RuntimeError("the daemon is stopping"))
            return future
        if self.queued:  # waiting for an exec slot: it begins after this call anyway
            self._answering = [*(self._answering or ()), future]
            return future
        self._asked = [*(self._asked or ()), future]
        if not self.busy:
            self._scheduled = True
            self._due = self._loop.time()
            self._on_due()
        return future

    def _answer(self, result: CheckResult) -> None:
        waiters, self._answering = self._answering, None
        for future in waiters or ():
            if not future.done():
                future.set_result(result)

    def _fail_waiters(self, reason: str) -> None:
        for waiters in (self._asked, self._answering):
            for future in waiters or ():
                if not future.done():
                    future.set_exception(RuntimeError(reason))
        self._asked = self._answering = None

    def abandon(self) -> None:
        self._fail_waiters("the daemon stopped")
        self.probe.cancel()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._set_idle()

    def _schedule(self, delay: float) -> None:
        if self.stopping:
            return
        assert self.wheel is not None
        assert self._loop is not None
        self._scheduled = True
        self._due = self.wheel.call_at(self._loop.time() + delay, self._on_due)

    def _schedule_next(self) -> None:
        """One interval from now; sooner when someone asked for a check. With its checks
        stopped (``on_exhausted: stop``) none until a restart window frees the budget, or
        ``check_now`` (a reset, a resume, the API) or a reload starts them again."""
        if self._asked:
            self._schedule(0.0)
        elif not self.policy.status.checks_stopped:
            self._schedule(self.cfg.interval)
        else:
            frees = self.policy.budget_frees_at()
            if frees is not None:
                assert self.wheel is not None
                # one tick late: due times are rounded down, and the budget must be free
                wait = frees - self.clock.monotonic() + self.wheel.tick
                self._schedule(max(wait, 0.0))

    def _on_due(self) -> None:
        if not self._scheduled:  # stopped meanwhile
            return
        assert self._loop is not None
        assert self.wheel is not None
        if self._loop.time() < self._due - self.wheel.tick:
            return  # an entry from before a "check now": the current one is due later
        self._scheduled = False
        if self.gate is None or self.gate.enter(self):
            self.begin()
        else:
            self.queued = True

    def begin(self) -> None:
        """Start the check now (called when due, or by the gate when a slot frees)."""
        self.queued = False
        if self._asked is not None:  # this check answers those who asked for one
            self._answering, self._asked = [*(self._answering or ()), *self._asked], None
        loop, scheduler = self._loop, self.scheduler
        assert loop is not None
        assert scheduler is not None
        lag = loop.time() - self._due
        scheduler.lag.observe(lag if lag > 0.0 else 0.0)
        self.busy = True
        scheduler.busy += 1
        host = self._address_now()
        if host is None:
            self._task = loop.create_task(self._resolve_then_check())
        else:
            self.probe.start(host, self._on_result)

    def _set_idle(self) -> None:
        if self.busy:
            self.busy = False
            if self.scheduler is not None:
                self.scheduler.runner_idle()

    # -- results --------------------------------------------------------------------------

    def _on_result(self, result: CheckResult) -> None:
        if self.gate is not None:
            self.gate.leave()
        if self.retired:
            self._set_idle()
            self.probe.close()
            return
        status = self.policy.status
        before = (status.state, status.restart_count)
        if not result.ok and self.scheduler is not None and self.scheduler.stop_requested:
            # Stopping healthd stops what it runs (a service stop signals the whole cgroup):
            # a failure now says nothing about the workload, and the next start checks anew.
            self._fail_waiters("the daemon is stopping")
            self._set_idle()
            return
        if result.cert_not_after is not None:  # https: the server certificate's expiry
            certs.observe(self.cfg, status, result.cert_not_after, self.bus, self.clock)
        if not result.ok:
            found = self._address
            if found is not None and found.is_fallback:
                # Say why this address, where the failure is read (status, events, alerts).
                why = found.source.removeprefix("fallback: ")
                result = result._replace(
                    error=f"{result.error} ({found.host} is the fallback address: {why})"
                )
            self._address = None  # the workload may have moved: look again next time
        decision = self.policy.on_result(result)
        self.history.record(result, time.time())
        if self._answering is not None:
            self._answer(result)
        for event in decision.events:
            self.bus.publish(event)
        if decision.restart:
            assert self._loop is not None
            self._task = self._loop.create_task(self._restart())
            return
        self.on_change(self.cfg.workload, (status.state, status.restart_count) != before)
        self._set_idle()
        self._schedule_next()

    async def _restart(self) -> None:
        try:
            await self.actuator.restart(self.cfg)
        except RestartError as exc:
            error: str | None = str(exc)
        else:
            error = None
        self._task = None
        self._address = None  # a restarted container may come back elsewhere
        decision = self.policy.on_restart_outcome(error)
        for event in decision.events:
            self.bus.publish(event)
        if error is None:
            self.log.info(
                "restart_done",
                restart_count=self.policy.status.restart_count,
                state=State.RESTARTING.value,
            )
        self.on_change(self.cfg.workload, True)
        self._set_idle()
        if self.retired:
            self.probe.close()
        self._schedule_next()

    # -- address ----------------------------------------------------------------------------

    def _address_now(self) -> str | None:
        """The address to check, or None when it has to be looked up first."""
        if not self._needs_address:
            return ""
        if self._address is not None and self.clock.monotonic() < self._address_expires:
            return self._address.host
        if self.cfg.host:
            self._remember(Address(self.cfg.host, "host"))
            return self.cfg.host
        return None

    async def _resolve_then_check(self) -> None:
        found = await self.resolver.resolve(self.cfg.workload)
        self._task = None
        self._remember(found)
        self.probe.start(found.host, self._on_result)

    def _remember(self, found: Address) -> None:
        if self._address is None or found != self._address:
            status = self.policy.status
            if found.is_fallback and found.source != status.address_source:
                self.log.warning("address_fallback", address=found.host, reason=found.source)
            status.address, status.address_source = found.host, found.source
        self._address = found
        self._address_expires = self.clock.monotonic() + self.address_ttl
