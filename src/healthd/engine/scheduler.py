"""When each workload is checked, and what a result leads to.

Every workload has a ``WorkloadRunner`` driven by event-loop timers and probe callbacks, not a
task: due -> (wait for an exec slot) -> resolve the address -> probe -> policy -> events ->
restart if asked -> due again one interval after the check (or restart) ended. Checks of one
workload never overlap, and a slow check or a restart of one never delays another.

The ``Scheduler`` owns what is shared: the cap on exec checks in flight (spawning thousands of
shells at once would starve them all of CPU until they time out: a false alarm made by the
monitor itself), the lag histogram (how late checks start), and stopping. When the host cannot
keep up, checks start late and the schedule stretches; lag shows it and a warning says so,
while each check still gets its whole timeout from the moment it really starts.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from healthd.actions import Actuator
from healthd.checks import KINDS
from healthd.config.workload import WorkloadConfig
from healthd.engine.history import CheckHistory
from healthd.engine.lag import LagHistogram, quantile
from healthd.engine.policy import WorkloadPolicy
from healthd.errors import RestartError
from healthd.events import EventBus
from healthd.logs import Logger
from healthd.model import CheckResult, Clock, State
from healthd.resolve import Address, Resolver

# Due times are rounded down to a tick, so checks due together share one wake-up of the loop.
# Each wake-up of a Python process costs far more than its share of the work (the
# interpreter's caches have gone cold in between): at 1,000 TCP checks a second, 50 ms ticks
# cost a third less CPU per check than 10 ms ticks. Rounding down never delays a check, and a
# check that ends within its tick is next due exactly one interval after it started. The
# tick is kept to at most a twentieth of the shortest interval.
MAX_TICK = 0.05
MIN_TICK = 0.001


def tick_for(intervals: Iterable[float]) -> float:
    shortest = min(intervals, default=MAX_TICK * 20)
    return min(MAX_TICK, max(MIN_TICK, shortest / 20))


class TimerWheel:
    """Callbacks run at the tick their due time falls in; one loop timer for the earliest tick.

    Entries cannot be cancelled: their owners ignore a call they no longer want.
    """

    def __init__(self, tick: float = MAX_TICK) -> None:
        self.tick = tick
        self._slots: dict[int, list[Callable[[], None]]] = {}
        self._ticks: list[int] = []  # heap of the keys of _slots
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None
        self._firing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def call_at(self, when: float, callback: Callable[[], None]) -> float:
        """Run ``callback`` at loop time ``when`` (to the tick); returns the time it is due."""
        tick = self._tick_of(when)
        slot = self._slots.get(tick)
        if slot is None:
            self._slots[tick] = [callback]
            heapq.heappush(self._ticks, tick)
            if not self._firing and (self._armed_for is None or tick < self._armed_for):
                self._arm(tick)
        else:
            slot.append(callback)
        return tick * self.tick

    def overdue(self, now: float) -> float:
        """Seconds the earliest pending callback is past its tick (0 when none is): a loop
        that runs but whose wheel no longer fires shows here."""
        if not self._ticks:
            return 0.0
        return max(0.0, now - self._ticks[0] * self.tick)

    def retick(self, tick: float) -> None:
        """Change the tick (intervals changed on reload); pending callbacks keep their time."""
        if tick == self.tick:
            return
        old, self.tick = self.tick, tick
        slots: dict[int, list[Callable[[], None]]] = {}
        for key, callbacks in self._slots.items():
            slots.setdefault(int(key * old / tick + 1e-6), []).extend(callbacks)
        self._slots = slots
        self._ticks = sorted(slots)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_for = None
        if self._ticks and not self._firing:
            self._arm(self._ticks[0])

    def _tick_of(self, when: float) -> int:
        # The epsilon: 0.01 has no exact float, so the loop's millisecond clock at n/100 s
        # would floor to tick n-1, and a timer firing on time would find nothing due and spin.
        return int(when / self.tick + 1e-6)

    def _arm(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = tick
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_at(tick * self.tick, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_for = None
        assert self._loop is not None
        now = self._tick_of(self._loop.time())
        ticks, slots = self._ticks, self._slots
        self._firing = True  # callbacks schedule again; arm once, for the earliest, after them
        try:
            while ticks and ticks[0] <= now:
                for callback in slots.pop(heapq.heappop(ticks)):
                    try:
                        callback()
                    except Exception as exc:  # one workload's bug must not starve the others
                        self._loop.call_exception_handler(
                            {"message": "timer wheel callback failed", "exception": exc}
                        )
        finally:
            self._firing = False
            if ticks:
                self._arm(ticks[0])


class Uniform(Protocol):
    """Where the first checks' random spread comes from (random.Random fits, for tests)."""

    def uniform(self, a: float, b: float) -> float: ...


class SystemUniform:
    """os.urandom-backed: the random module is 150 KB of resident memory for one call each."""

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * (int.from_bytes(os.urandom(7)) >> 3) / (1 << 53)


class Gate:
    """At most ``limit`` checks in flight; the others wait their turn in order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.waiting: deque[WorkloadRunner] = deque()

    def enter(self, runner: WorkloadRunner) -> bool:
        """True: go now. False: queued; the gate starts it when a slot frees."""
        if self.active < self.limit:
            self.active += 1
            return True
        self.waiting.append(runner)
        return False

    def leave(self) -> None:
        while self.waiting:
            runner = self.waiting.popleft()
            if runner.queued:  # not stopped while it waited
                runner.begin()
                return
        self.active -= 1


class Scheduler:
    def __init__(
        self,
        *,
        log: Logger,
        exec_limit: int,
        lag_warning: float,
        rng: Uniform | None = None,
    ) -> None:
        self.log = log
        self.runners: dict[str, WorkloadRunner] = {}
        self.gates = {"exec": Gate(exec_limit)}
        self.lag = LagHistogram()
        self.lag_warning = lag_warning
        self.behind = False
        self.busy = 0
        self.stopping = False
        self.stop_requested = False  # set at once by a signal, before the drain begins
        self.rng = rng or SystemUniform()
        self.wheel = TimerWheel()
        self._idle = asyncio.Event()
        self._reviewed = self.lag.cumulative()
        self.started = False

    def add(self, runner: WorkloadRunner) -> None:
        runner.scheduler = self
        runner.wheel = self.wheel
        runner.gate = self.gates.get(runner.cfg.type)
        self.runners[runner.cfg.workload] = runner

    def start(self, first_check_within: float) -> None:
        """First checks at random points of the first window, so they do not fire at once."""
        self.wheel.tick = tick_for(r.cfg.interval for r in self.runners.values())
        self.started = True
        for runner in self.runners.values():
            self._start(runner, first_check_within)

    def _start(self, runner: WorkloadRunner, first_check_within: float) -> None:
        runner.start(self.rng.uniform(0, min(first_check_within, runner.cfg.interval)))

    def replace(
        self, added: list[WorkloadRunner], removed: list[str], first_check_within: float
    ) -> None:
        """Reload: retire the runners of ``removed`` and start ``added``. A name in both is a
        changed workload: a check of the old config still in flight is dropped, not counted."""
        for name in removed:
            runner = self.runners.pop(name, None)
            if runner is not None:
                runner.retire()
        for runner in added:
            self.add(runner)
        self.wheel.retick(tick_for(r.cfg.interval for r in self.runners.values()))
        if self.started and not self.stopping:
            for runner in added:
                self._start(runner, first_check_within)

    @property
    def checks_total(self) -> int:
        return self.lag.count

    # -- stopping -------------------------------------------------------------------------

    def stop(self) -> None:
        """No new checks; checks and restarts in flight go on until ``drained``."""
        self.stopping = True
        for runner in self.runners.values():
            runner.stop()
        for gate in self.gates.values():
            gate.waiting.clear()
        self._note_idle()

    async def drained(self) -> None:
        await self._idle.wait()

    def abandon(self) -> int:
        """Cancel whatever is still in flight (forced stop); returns how many there were."""
        busy = [r for r in self.runners.values() if r.busy]
        for runner in busy:
            runner.abandon()
        return len(busy)

    def runner_idle(self) -> None:
        """A runner finished its check (and restart): one fewer busy; a drain may be done."""
        self.busy -= 1
        self._note_idle()

    def _note_idle(self) -> None:
        if self.stopping and self.busy == 0:
            self._idle.set()

    # -- lag --------------------------------------------------------------------------------

    def review(self) -> None:
        """Compare the lag since the last review with the warning level; log the changes."""
        now = self.lag.cumulative()
        window = [b - a for a, b in zip(self._reviewed, now, strict=True)]
        self._reviewed = now
        if not window[-1]:
            return
        p99 = quantile(0.99, window)
        behind = not math.isnan(p99) and p99 > self.lag_warning
        if behind and not self.behind:
            self.log.warning(
                "scheduler_behind",
                lag_p99=round(p99, 3),
                lag_p50=round(quantile(0.5, window), 3),
                checks=window[-1],
                hint="checks start late and the schedule stretches; the host is overloaded",
            )
        elif self.behind and not behind:
            self.log.info("scheduler_on_time", lag_p99=round(p99, 3), checks=window[-1])
        self.behind = behind

    def to_json(self) -> dict[str, object]:
        return {
            "behind": self.behind,
            "busy": self.busy,
            "queued": sum(len(g.waiting) for g in self.gates.values()),
            **self.lag.to_json(),
        }


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
            return
        status = self.policy.status
        before = (status.state, status.restart_count)
        if not result.ok and self.scheduler is not None and self.scheduler.stop_requested:
            # Stopping healthd stops what it runs (a service stop signals the whole cgroup):
            # a failure now says nothing about the workload, and the next start checks anew.
            self._fail_waiters("the daemon is stopping")
            self._set_idle()
            return
        if not result.ok:
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
        self._schedule(0.0 if self._asked else self.cfg.interval)

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
        self._schedule(0.0 if self._asked else self.cfg.interval)

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
