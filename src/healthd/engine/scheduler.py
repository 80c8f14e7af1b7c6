"""When each workload is checked: the timer wheel, the exec gate, lag, and stopping.

Every workload has a ``WorkloadRunner`` (``runner.py``) that the wheel wakes when it is due.
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
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from healthd.engine.lag import LagHistogram, quantile
from healthd.logs import Logger

if TYPE_CHECKING:
    from healthd.engine.runner import WorkloadRunner

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

    # -- watchdog -------------------------------------------------------------------------

    def start_watchdog(self, interval: float, pet: Callable[[], None]) -> None:
        """Call ``pet`` now and every ``interval`` seconds, from the timer wheel that starts
        the checks: a thread would go on petting while the loop is blocked, and a loop timer
        of its own while the wheel no longer fires. Either way monitoring has stopped, and
        the pets must stop with it so that systemd restarts the daemon."""
        loop = asyncio.get_running_loop()

        def beat() -> None:
            pet()
            self.wheel.call_at(loop.time() + interval, beat)

        beat()

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
