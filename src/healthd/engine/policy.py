"""The state machine of one workload: check results in, transitions and actions out.

No I/O and no real clock: the daemon feeds results and restart outcomes, and acts on the
returned ``Decision``. This is the only place that knows what "unhealthy" or "restart now"
means, so tests drive it with a manual clock and scripted results.

Rules:
- ``starting`` until a success (-> healthy) or ``retries`` failures in a row (-> unhealthy).
- Failures below the threshold leave the state alone; a success resets the count.
- Unhealthy with ``auto_restart``: restart when the budget allows (``max_restarts``, 0 is
  unlimited) and ``restart_delay`` has passed since the last attempt; otherwise wait for a
  later failing check. With the budget spent the state is ``gave_up`` and
  ``restart_exhausted`` is emitted once per unhealthy episode.
- A restart that succeeds counts against the budget, resets the failure count and leaves the
  workload ``restarting`` until it proves itself; one that fails emits ``restart_failed``, does
  not count, and is tried again after ``restart_delay``.
- ``unhealthy`` / ``healthy`` events mark changes of the verdict, which survives a daemon
  restart: an episode is announced once, and its recovery always is.
- Paused (maintenance): results are counted and failures still emit ``check_fail``, but the
  state, the verdict and the restart budget wait; after ``resume`` the next result is judged
  with the counts made meanwhile (three failures in a row while paused: unhealthy at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from healthd import durations
from healthd.model import CheckResult, Clock, Event, EventType, State, WorkloadStatus

_UNHEALTHY_STATES = (State.UNHEALTHY, State.RESTARTING, State.GAVE_UP)


@dataclass(frozen=True, slots=True)
class PolicySettings:
    retries: int = 3
    auto_restart: bool = False
    max_restarts: int = 0
    restart_delay: float = 10.0


@dataclass(slots=True)
class Decision:
    events: list[Event] = field(default_factory=list)
    restart: bool = False  # the daemon must restart the workload and report the outcome


# Returned when a result changes nothing worth acting on (most results): shared, never mutated.
_QUIET = Decision()


class WorkloadPolicy:
    __slots__ = (
        "_exhausted_announced",
        "_last_attempt",
        "clock",
        "restart_in_flight",
        "settings",
        "status",
        "verdict",
    )

    def __init__(self, settings: PolicySettings, status: WorkloadStatus, clock: Clock) -> None:
        self.settings = settings
        self.status = status
        self.clock = clock
        # The last verdict announced by an event: None (never), True (healthy), False.
        self.verdict: bool | None = _verdict_of(status)
        self.restart_in_flight = False
        self._last_attempt: float | None = self._restore_last_attempt()
        # An exhausted budget announced before a daemon restart is not announced again.
        self._exhausted_announced = status.state is State.GAVE_UP
        status.state = State.STARTING
        status.healthy = False

    # -- inputs -------------------------------------------------------------------------

    def on_result(self, result: CheckResult) -> Decision:
        """Count ``result`` and decide; the returned ``Decision`` must not be mutated."""
        s = self.status
        now = self.clock.now()
        s.total_checks += 1
        s.last_check = now
        s.last_check_duration = result.duration
        if s.paused:
            return self._while_paused(result, now)
        if result.ok:
            s.consecutive_fails = 0
            s.last_healthy = now
            s.last_error = ""
            s.healthy = True
            previous = s.state
            s.state = State.HEALTHY
            self._exhausted_announced = False
            if self.verdict is True:
                return _QUIET
            self.verdict, verdict = True, self.verdict
            if verdict is False:
                return Decision(
                    [self._event(EventType.HEALTHY, "health check recovered", previous)]
                )
            return _QUIET

        decision = Decision()
        s.total_fails += 1
        s.consecutive_fails += 1
        s.last_error = result.error
        decision.events.append(self._check_fail(result))
        if s.consecutive_fails < self.settings.retries:
            return decision
        s.healthy = False
        if s.state not in _UNHEALTHY_STATES or s.state is State.RESTARTING:
            previous = s.state
            s.state = State.UNHEALTHY
            if self.verdict is not False:
                decision.events.append(
                    self._event(
                        EventType.UNHEALTHY,
                        f"health check failed {s.consecutive_fails} times: {result.error}",
                        previous,
                        error=result.error,
                        duration=round(result.duration, 6),
                        consecutive_fails=s.consecutive_fails,
                    )
                )
            self.verdict = False
        if self.settings.auto_restart:
            self._consider_restart(decision)
        return decision

    def on_restart_outcome(self, error: str | None) -> Decision:
        """Report how the restart asked for by the last decision went (None: it succeeded)."""
        s = self.status
        self.restart_in_flight = False
        self._last_attempt = self.clock.monotonic()
        decision = Decision()
        attempt = s.restart_count + s.restart_failures + 1  # failed attempts count too
        if error is None:
            s.restart_count += 1
            s.last_restart = self.clock.now()
            s.consecutive_fails = 0
            s.last_restart_error = ""
            return decision  # state stays RESTARTING until a result decides
        s.restart_failures += 1
        s.last_restart_error = error
        previous = s.state
        s.state = State.UNHEALTHY
        delay = durations.format_seconds(self.settings.restart_delay)
        decision.events.append(
            self._event(
                EventType.RESTART_FAILED,
                f"restart attempt {attempt} failed: {error}; next try in {delay} at the earliest",
                previous,
                attempt=attempt,
                error=error,
            )
        )
        return decision

    def pause(self, reason: str = "") -> None:
        """Maintenance: checks go on and are counted, the state machine and restarts wait."""
        s = self.status
        if not s.paused:
            s.paused = True
            s.paused_at = self.clock.now()
        s.paused_reason = reason

    def resume(self) -> None:
        """Back to normal: the next result is judged against the counts made while paused."""
        s = self.status
        s.paused = False
        s.paused_at = None
        s.paused_reason = ""

    # -- queries --------------------------------------------------------------------------

    def next_restart_at(self) -> float | None:
        """Monotonic time before which no restart may start, or None if one could start now."""
        if self._last_attempt is None:
            return None
        due = self._last_attempt + self.settings.restart_delay
        return due if due > self.clock.monotonic() else None

    def budget_left(self) -> int | None:
        """Restarts left, or None when unlimited."""
        if not self.settings.max_restarts:
            return None
        return max(0, self.settings.max_restarts - self.status.restart_count)

    # -- internals --------------------------------------------------------------------------

    def _while_paused(self, result: CheckResult, now: datetime) -> Decision:
        """Count the result; no transition, no verdict, no restart while under maintenance."""
        s = self.status
        if result.ok:
            s.consecutive_fails = 0
            s.last_healthy = now
            s.last_error = ""
            return _QUIET
        s.total_fails += 1
        s.consecutive_fails += 1
        s.last_error = result.error
        return Decision([self._check_fail(result)])

    def _check_fail(self, result: CheckResult) -> Event:
        s = self.status
        return Event(
            EventType.CHECK_FAIL,
            s.workload,
            s.last_check or self.clock.now(),
            result.error,
            details={
                "duration": round(result.duration, 6),
                "consecutive_fails": s.consecutive_fails,
            },
        )

    def _consider_restart(self, decision: Decision) -> None:
        s = self.status
        if self.restart_in_flight:
            return
        if self.budget_left() == 0:
            previous: State = s.state
            s.state = State.GAVE_UP
            if not self._exhausted_announced:
                self._exhausted_announced = True
                decision.events.append(
                    self._event(
                        EventType.RESTART_EXHAUSTED,
                        f"restart budget of {self.settings.max_restarts} spent; "
                        "no more restarts, checks go on",
                        previous,
                        max_restarts=self.settings.max_restarts,
                    )
                )
            return
        if self.next_restart_at() is not None:
            return  # too soon after the last attempt; a later failing check will retry
        attempt = s.restart_count + s.restart_failures + 1  # failed attempts count too
        previous = s.state
        s.state = State.RESTARTING
        self.restart_in_flight = True
        self._last_attempt = self.clock.monotonic()
        s.last_restart_attempt = self.clock.now()
        decision.restart = True
        decision.events.append(
            self._event(
                EventType.RESTART, f"auto-restarting (attempt {attempt})", previous, attempt=attempt
            )
        )

    def _event(self, kind: EventType, message: str, previous: State, **details: object) -> Event:
        return Event(
            kind,
            self.status.workload,
            self.clock.now(),
            message,
            state_from=previous,
            state_to=self.status.state,
            details=dict(details),
        )

    def _restore_last_attempt(self) -> float | None:
        """Carry the restart delay across a daemon restart, immune to wall-clock jumps."""
        times = [t for t in (self.status.last_restart, self.status.last_restart_attempt) if t]
        if not times:
            return None
        last = max(times)
        elapsed = (self.clock.now() - last).total_seconds()
        elapsed = min(max(elapsed, 0.0), self.settings.restart_delay)
        return self.clock.monotonic() - elapsed


def _verdict_of(status: WorkloadStatus) -> bool | None:
    """The verdict a saved status had announced; None when it was never decided."""
    if status.state in _UNHEALTHY_STATES:
        return False
    if status.state is State.HEALTHY:
        return True
    return None
