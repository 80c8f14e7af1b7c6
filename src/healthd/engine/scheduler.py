"""One loop per workload: resolve, check with a deadline, feed the policy, act, sleep.

Checks of one workload never overlap (the loop is sequential) and the next one is scheduled
one interval after the previous one ended. Every workload has its own task, so a slow check or
a restart of one never delays another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from healthd.actions import Actuator
from healthd.checks import KINDS, run_check
from healthd.config.workload import WorkloadConfig
from healthd.engine.policy import WorkloadPolicy
from healthd.errors import RestartError
from healthd.events import EventBus
from healthd.logs import Logger
from healthd.model import CheckResult, Clock, State
from healthd.resolve import Address, Resolver


class WorkloadRunner:
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
        on_change: Callable[[bool], None],
    ) -> None:
        self.cfg = cfg
        self.policy = policy
        self.resolver = resolver
        self.actuator = actuator
        self.bus = bus
        self.clock = clock
        self.log = log.bind(workload=cfg.workload)
        self.address_ttl = address_ttl
        self.on_change = on_change  # called after every result; True when it must be saved now
        self.busy = False  # in a check or restart: stopping lets it finish
        self.stopping = False
        self._address: Address | None = None
        self._address_expires = 0.0
        self._needs_address = KINDS[cfg.type].needs_address

    async def run(self, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        while True:
            self.busy = True
            try:
                await self.step()
            finally:
                self.busy = False
            if self.stopping:  # set by the daemon while this check ran
                return
            await asyncio.sleep(self.cfg.interval)

    async def step(self) -> CheckResult:
        """One check and whatever it leads to."""
        status = self.policy.status
        before = (status.state, status.restart_count)
        address = await self.address()
        result = await run_check(self.cfg, address.host if address else "")
        if not result.ok:
            self._address = None  # the workload may have moved: look again next time
        decision = self.policy.on_result(result)
        for event in decision.events:
            self.bus.publish(event)
        if decision.restart:
            await self._restart()
        self.on_change((status.state, status.restart_count) != before)
        return result

    async def address(self) -> Address | None:
        if not self._needs_address:
            return None
        now = self.clock.monotonic()
        if self._address is not None and now < self._address_expires:
            return self._address
        if self.cfg.host:
            found = Address(self.cfg.host, "host")
        else:
            found = await self.resolver.resolve(self.cfg.workload)
        if self._address is None or found != self._address:
            status = self.policy.status
            if found.is_fallback and found.source != status.address_source:
                self.log.warning("address_fallback", address=found.host, reason=found.source)
            status.address, status.address_source = found.host, found.source
        self._address = found
        self._address_expires = now + self.address_ttl
        return found

    async def _restart(self) -> None:
        try:
            await self.actuator.restart(self.cfg)
        except RestartError as exc:
            error: str | None = str(exc)
        else:
            error = None
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
