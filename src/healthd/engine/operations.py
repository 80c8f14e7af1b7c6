"""What the API and the CLI ask of one workload: pause and resume it (maintenance), check it
now, reset its restart budget.

Apart from the daemon's wiring and stopping so each has one owner; the daemon's ``pause``,
``resume``, ``check_now`` and ``runner`` call these (and the API calls ``reset`` here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from healthd.engine.runner import WorkloadRunner
from healthd.engine.workloads import Workloads
from healthd.errors import NotMonitored, UnknownWorkload
from healthd.events import EventBus
from healthd.logs import Logger
from healthd.model import CheckResult, Clock, Event, EventType, State, WorkloadStatus


class Operations:
    def __init__(
        self,
        workloads: Workloads,
        *,
        bus: EventBus,
        log: Logger,
        clock: Clock,
        on_change: Callable[[str, bool], None],
    ) -> None:
        self.workloads = workloads
        self.bus = bus
        self.log = log
        self.clock = clock
        self._changed = on_change

    def runner(self, name: str) -> WorkloadRunner:
        """The runner of a monitored workload; raises UnknownWorkload or NotMonitored."""
        runner = self.workloads.runners.get(name)
        if runner is not None:
            return runner
        status = self.workloads.statuses.get(name)
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

    def reset(self, name: str) -> WorkloadStatus:
        """Restore the restart budget, backoff and flap history; checking resumes at once
        (a workload whose checks had stopped included)."""
        runner = self.runner(name)
        status = runner.policy.status
        was, left = status.state, runner.policy.budget_left()
        decision = runner.policy.reset()
        self.log.info(
            "workload_reset",
            workload=name,
            state_from=was.value,
            budget_left_before="unlimited" if left is None else left,
        )
        for event in decision.events:
            self.bus.publish(event)
        self._changed(name, True)
        runner.check_now().add_done_callback(_ignore_outcome)
        return status

    async def check_now(self, name: str) -> CheckResult:
        return await self.runner(name).check_now()


def _ignore_outcome(future: asyncio.Future[CheckResult]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never seen
