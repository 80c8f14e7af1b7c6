"""``start_period`` (Docker's): time for a workload to come up before its failures count.

After the daemon starts and after each successful restart, failures are counted
(``check_fail`` with ``start_period: true``, ``total_fails``) but not towards ``retries``,
until the period ends or the first success ends it. ``policy.py`` asks at each result; the
end is kept on the monotonic clock, and shown in ``starting_until`` (wall clock).
"""

from __future__ import annotations

from datetime import timedelta

from healthd.model import Clock, WorkloadStatus


class StartPeriod:
    __slots__ = ("clock", "status", "until")

    def __init__(self, status: WorkloadStatus, clock: Clock) -> None:
        self.status = status
        self.clock = clock
        self.until: float | None = None  # monotonic end of the period running, if one is

    def begin(self, period: float) -> None:
        if period <= 0:
            self.end()
            return
        self.until = self.clock.monotonic() + period
        self.status.starting_until = self.clock.now() + timedelta(seconds=period)

    def end(self) -> None:
        self.until = None
        self.status.starting_until = None

    def active(self, mono: float) -> bool:
        """Whether a failure at ``mono`` falls in the period (which ends once it passed)."""
        if self.until is None:
            return False
        if mono < self.until:
            return True
        self.end()
        return False
