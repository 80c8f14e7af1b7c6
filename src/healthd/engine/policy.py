"""The state machine of one workload: check results in, transitions and actions out.

No I/O and no real clock: the daemon feeds results and restart outcomes, and acts on the
returned ``Decision``. This is the only place that knows what "unhealthy" or "restart now"
means, so tests drive it with a manual clock and scripted results. Windows and delays are
measured on the monotonic clock; the times saved in the status (wall clock) only carry them
across a daemon restart.

Rules kept here, on the verdict:
- ``starting`` until ``success_threshold`` successes in a row (-> healthy) or ``retries``
  failures in a row (-> unhealthy).
- Failures below the threshold leave the state alone; a success resets the count.
- ``success_threshold`` (default 1) successes in a row turn any verdict that is not healthy
  into healthy: unhealthy, restarting and gave_up, and ``starting`` for a workload never
  judged (as Kubernetes' readiness starts not ready). A workload that was healthy before a
  daemon restart needs one success: the daemon restarting says nothing about it. Below the
  threshold the state stays and ``consecutive_successes`` counts.
- ``unhealthy`` / ``healthy`` events mark changes of the verdict, which survives a daemon
  restart: an episode is announced once, and its recovery always is.
- Paused (maintenance): results are counted and failures still emit ``check_fail``, but the
  state, the verdict and the restart budget wait; after ``resume`` the next result is judged
  with the counts made meanwhile (three failures in a row while paused: unhealthy at once).
- ``reset``: the budget, the backoff and the flap history start over; gave_up -> unhealthy.

The other rules are in the modules that apply them, each with its own list:
- ``start_period.py``: failures that do not count yet (``start_period``).
- ``restarts.py``: restarts with ``auto_restart``: the budget (``max_restarts``,
  ``restart_window``, ``on_exhausted``), the delay and its backoff, restart outcomes.
- ``holds.py``: what holds a due restart (flapping, ``depends_on``).
- ``flapping.py``: flap detection (``flap_threshold``, ``flap_window``).
- ``windows.py``: the sliding windows behind ``restart_window`` and flap detection;
  ``decision.py``: what a decision holds; ``policy_settings.py``: the settings.
"""

from __future__ import annotations

from datetime import datetime

from healthd.engine import flapping
from healthd.engine.decision import QUIET, Decision, transition
from healthd.engine.flapping import FlapDetector
from healthd.engine.holds import DependencyLookup
from healthd.engine.policy_settings import PolicySettings
from healthd.engine.restarts import Restarts, reset_budget
from healthd.engine.start_period import StartPeriod
from healthd.model import CheckResult, Clock, Event, EventType, State, WorkloadStatus

# What the daemon, the CLI and the tests import from here, some of it defined in the modules
# named above (so that none of them imports this one).
__all__ = [
    "Decision",
    "DependencyLookup",
    "PolicySettings",
    "WorkloadPolicy",
    "reset_budget",
]

_UNHEALTHY_STATES = (State.UNHEALTHY, State.RESTARTING, State.GAVE_UP)


class WorkloadPolicy:
    __slots__ = (
        "_flaps",
        "_restarts",
        "_start",
        "clock",
        "settings",
        "status",
        "verdict",
    )

    def __init__(
        self,
        settings: PolicySettings,
        status: WorkloadStatus,
        clock: Clock,
        dependency: DependencyLookup | None = None,
    ) -> None:
        self.settings = settings
        self.status = status
        self.clock = clock
        # The last verdict announced by an event: None (never), True (healthy), False.
        self.verdict: bool | None = _verdict_of(status)
        # Reads what the saved status says of past restarts: before the state is reset below.
        self._restarts = Restarts(settings, status, clock)
        self._start = StartPeriod(status, clock)
        self._flaps: FlapDetector | None = None  # only with flap_threshold
        status.state = State.STARTING
        status.healthy = False
        status.checks_stopped = False  # a daemon start checks again
        status.restart_held = ""  # judged again at the first failing check
        self.configure(settings, dependency)
        self._start.begin(settings.start_period)

    def configure(
        self, settings: PolicySettings, dependency: DependencyLookup | None = None
    ) -> None:
        """Take (new) settings, at start or on a reload: counts, verdict and pacing are kept."""
        self.settings = settings
        mono = self.clock.monotonic()
        self._restarts.configure(settings, dependency, mono)
        self._flaps = flapping.detector(self._flaps, settings, self.status, self.clock, mono)
        if not settings.start_period:
            self._start.end()

    # -- inputs -------------------------------------------------------------------------

    def on_result(self, result: CheckResult) -> Decision:
        """Count ``result`` and decide; the returned ``Decision`` must not be mutated."""
        s = self.status
        now = self.clock.now()
        s.total_checks += 1
        s.last_check = now
        s.last_check_duration = result.duration
        s.last_check_note = result.note
        if s.paused:
            return self._while_paused(result, now)
        if result.ok:
            return self._on_success(now)
        return self._on_failure(result)

    def on_restart_outcome(self, error: str | None) -> Decision:
        """Report how the restart asked for by the last decision went (None: it succeeded)."""
        decision = self._restarts.outcome(error)
        if error is None:  # a fresh start: judged anew, after its start period
            s = self.status
            s.consecutive_fails = 0
            s.consecutive_successes = 0
            self._start.begin(self.settings.start_period)
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

    def reset(self) -> Decision:
        """``healthd reset``: the restart budget, the backoff and the flap history start over;
        a workload that gave up is unhealthy again, so its next failing check may restart it
        (still no sooner than ``restart_delay`` after the last attempt)."""
        s = self.status
        previous = s.state
        reset_budget(s)
        self._restarts.reset()
        if self._flaps is not None:
            self._flaps.clear()
        left = self.budget_left()
        budget = "unlimited" if left is None else f"{left} restart{'s' if left != 1 else ''}"
        return Decision(
            [
                transition(
                    s,
                    self.clock,
                    EventType.RESET,
                    f"restart budget restored ({budget}); backoff and flap history cleared",
                    previous,
                    restart_count=s.restart_count,
                    budget_left=left,
                )
            ]
        )

    # -- queries (restarts.py answers them) -----------------------------------------------

    @property
    def restart_in_flight(self) -> bool:
        """A restart was asked for and its outcome is not reported yet."""
        return self._restarts.in_flight

    def next_restart_at(self) -> float | None:
        """Monotonic time before which no restart may start, or None if one could start now."""
        return self._restarts.next_restart_at()

    def budget_left(self) -> int | None:
        """Restarts left, or None when unlimited."""
        return self._restarts.budget_left()

    def budget_frees_at(self) -> float | None:
        """With a window and the budget spent: the monotonic time a restart is allowed again."""
        return self._restarts.budget_frees_at()

    def restart_delay_now(self) -> float:
        """The delay that paces the next attempt after the last one (backoff included)."""
        return self._restarts.delay()

    # -- internals --------------------------------------------------------------------------

    def _on_success(self, now: datetime) -> Decision:
        s = self.status
        s.consecutive_fails = 0
        s.last_healthy = now
        s.last_error = ""
        s.checks_stopped = False  # it answers again: watch it again
        start = self._start
        if start.until is not None:
            start.end()
        flaps = self._flaps
        if s.state is State.HEALTHY:
            if flaps is None and s.current_restart_delay is None:
                return QUIET  # the common case, kept cheap
            mono = self.clock.monotonic()
            self._restarts.settle_backoff(mono)
            events: list[Event] = []
            if flaps is not None:
                flaps.review(mono, events)
            return Decision(events) if events else QUIET
        mono = self.clock.monotonic()
        events = []
        if flaps is not None:
            flaps.review(mono, events)
        s.consecutive_successes += 1
        needed = 1 if self.verdict is True else self.settings.success_threshold
        if s.consecutive_successes < needed:
            return Decision(events) if events else QUIET
        previous = s.state
        s.state = State.HEALTHY
        s.healthy = True
        s.consecutive_successes = 0
        s.restart_held = ""
        self._restarts.became_healthy(mono)
        verdict, self.verdict = self.verdict, True
        if verdict is False:
            details = {"successes": needed} if needed > 1 else {}
            events.append(
                transition(
                    s, self.clock, EventType.HEALTHY, "health check recovered", previous, **details
                )
            )
            if flaps is not None:
                flaps.verdict_changed(mono, events)
        return Decision(events) if events else QUIET

    def _on_failure(self, result: CheckResult) -> Decision:
        s = self.status
        mono = self.clock.monotonic()
        decision = Decision()
        events = decision.events
        s.total_fails += 1
        s.consecutive_successes = 0
        s.last_error = result.error
        starting = self._start.active(mono)
        if not starting:
            s.consecutive_fails += 1
        events.append(self._check_fail(result, starting))
        flaps = self._flaps
        if flaps is not None:
            flaps.review(mono, events)
        if starting or s.consecutive_fails < self.settings.retries:
            return decision
        s.healthy = False
        if s.state not in _UNHEALTHY_STATES or s.state is State.RESTARTING:
            previous = s.state
            if previous is State.HEALTHY:
                self._restarts.left_healthy(mono)
            s.state = State.UNHEALTHY
            if self.verdict is not False:
                events.append(
                    transition(
                        s,
                        self.clock,
                        EventType.UNHEALTHY,
                        f"health check failed {s.consecutive_fails} times: {result.error}",
                        previous,
                        error=result.error,
                        duration=round(result.duration, 6),
                        consecutive_fails=s.consecutive_fails,
                    )
                )
                self.verdict = False
                if flaps is not None:
                    flaps.verdict_changed(mono, events)
        if self.settings.auto_restart:
            self._restarts.consider(decision)
        return decision

    def _while_paused(self, result: CheckResult, now: datetime) -> Decision:
        """Count the result; no transition, no verdict, no restart while under maintenance."""
        s = self.status
        if result.ok:
            s.consecutive_fails = 0
            s.last_healthy = now
            s.last_error = ""
            s.checks_stopped = False
            if s.state is not State.HEALTHY:
                s.consecutive_successes += 1
            self._start.end()
            return QUIET
        s.total_fails += 1
        s.consecutive_successes = 0
        starting = self._start.active(self.clock.monotonic())
        if not starting:
            s.consecutive_fails += 1
        s.last_error = result.error
        return Decision([self._check_fail(result, starting)])

    def _check_fail(self, result: CheckResult, starting: bool) -> Event:
        s = self.status
        details: dict[str, object] = {
            "duration": round(result.duration, 6),
            "consecutive_fails": s.consecutive_fails,
        }
        if starting:
            details["start_period"] = True  # not counted towards retries
        return Event(
            EventType.CHECK_FAIL,
            s.workload,
            s.last_check or self.clock.now(),
            result.error,
            details=details,
        )


def _verdict_of(status: WorkloadStatus) -> bool | None:
    """The verdict a saved status had announced; None when it was never decided."""
    if status.state in _UNHEALTHY_STATES:
        return False
    if status.state is State.HEALTHY:
        return True
    return None
