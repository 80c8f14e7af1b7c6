"""The state machine of one workload: check results in, transitions and actions out.

No I/O and no real clock: the daemon feeds results and restart outcomes, and acts on the
returned ``Decision``. This is the only place that knows what "unhealthy" or "restart now"
means, so tests drive it with a manual clock and scripted results. Windows and delays are
measured on the monotonic clock; the times saved in the status (wall clock) only carry them
across a daemon restart.

Rules:
- ``starting`` until ``success_threshold`` successes in a row (-> healthy) or ``retries``
  failures in a row (-> unhealthy).
- Failures below the threshold leave the state alone; a success resets the count.
- ``success_threshold`` (default 1) successes in a row turn any verdict that is not healthy
  into healthy: unhealthy, restarting and gave_up, and ``starting`` for a workload never
  judged (as Kubernetes' readiness starts not ready). A workload that was healthy before a
  daemon restart needs one success: the daemon restarting says nothing about it. Below the
  threshold the state stays and ``consecutive_successes`` counts.
- ``start_period`` (Docker): after the daemon starts and after each successful restart,
  failures are counted (``check_fail`` with ``start_period: true``, ``total_fails``) but not
  towards ``retries``, until the period ends or the first success ends it.
- Unhealthy with ``auto_restart``: restart when the budget allows (``max_restarts``, 0 is
  unlimited), nothing holds it and the restart delay has passed since the last attempt;
  otherwise wait for a later failing check. With the budget spent the state is ``gave_up``
  and ``restart_exhausted`` is emitted once per unhealthy episode (restarts a window allows
  anew are announced by their ``restart`` events). ``on_exhausted: stop`` also stops
  checking (``checks_stopped``) until ``healthd reset``, a reload, or (with a window) the
  budget frees.
- The budget counts successful restarts since the last ``reset`` (``restart_count`` stays
  the lifetime total), or with ``restart_window`` those within the window: as old ones leave
  it, restarts resume by themselves.
- ``restart_backoff``: each attempt doubles the delay before the next one, from
  ``restart_delay`` up to ``max_restart_delay``; ``backoff_reset`` of continuous health (or a
  reset) starts it over (kubelet's CrashLoopBackOff).
- A restart that succeeds counts against the budget, resets the failure count, starts the
  start period and leaves the workload ``restarting`` until it proves itself; one that fails
  emits ``restart_failed``, does not count, and is tried again after the delay.
- Holds: a due restart waits while the workload is flapping or a dependency (``depends_on``)
  is not healthy (unhealthy, restarting, gave_up, starting or paused); ``restart_held`` says
  why, one ``restart_held`` event per new reason. It is re-judged at every failing check, so
  restarts resume when the hold ends. A dependency that is not monitored holds nothing.
- Flapping: more than ``flap_threshold`` verdict changes (``healthy``/``unhealthy`` events)
  within ``flap_window`` set ``flapping`` with one ``flapping`` event; fewer than
  ``flap_threshold`` in the window clear it with one ``flapping_stopped``. Verdict events
  still go out meanwhile: the journal stays the truth.
- ``reset``: the budget, the backoff and the flap history start over; gave_up -> unhealthy.
- ``unhealthy`` / ``healthy`` events mark changes of the verdict, which survives a daemon
  restart: an episode is announced once, and its recovery always is.
- Paused (maintenance): results are counted and failures still emit ``check_fail``, but the
  state, the verdict and the restart budget wait; after ``resume`` the next result is judged
  with the counts made meanwhile (three failures in a row while paused: unhealthy at once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from healthd import durations
from healthd.engine.windows import FlapHistory, RestartWindow
from healthd.model import CheckResult, Clock, Event, EventType, State, WorkloadStatus

_UNHEALTHY_STATES = (State.UNHEALTHY, State.RESTARTING, State.GAVE_UP)
KEEP_CHECKING = "keep_checking"
STOP = "stop"

# The status of a workload this one depends on, or None when it is not monitored (not
# configured, disabled, its file broken, or closing a dependency cycle): that holds nothing.
DependencyLookup = Callable[[str], WorkloadStatus | None]


@dataclass(frozen=True, slots=True)
class PolicySettings:
    retries: int = 3
    auto_restart: bool = False
    max_restarts: int = 0
    restart_delay: float = 10.0
    success_threshold: int = 1
    start_period: float = 0.0
    restart_backoff: bool = False
    max_restart_delay: float = 300.0
    backoff_reset: float = 600.0
    restart_window: float = 0.0  # 0: max_restarts counts since the last reset (the reference)
    on_exhausted: str = KEEP_CHECKING
    flap_threshold: int = 0  # 0: no flap detection
    flap_window: float = 600.0
    depends_on: tuple[str, ...] = ()


@dataclass(slots=True)
class Decision:
    events: list[Event] = field(default_factory=list)
    restart: bool = False  # the daemon must restart the workload and report the outcome


# Returned when a result changes nothing worth acting on (most results): shared, never mutated.
_QUIET = Decision()


class WorkloadPolicy:
    __slots__ = (
        "_dependency",
        "_exhausted_announced",
        "_flaps",
        "_healthy_since",
        "_last_attempt",
        "_start_until",
        "_window",
        "clock",
        "restart_in_flight",
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
        self._dependency = dependency
        # The last verdict announced by an event: None (never), True (healthy), False.
        self.verdict: bool | None = _verdict_of(status)
        self.restart_in_flight = False
        self._last_attempt: float | None = self._restore_last_attempt()
        # An exhausted budget announced before a daemon restart is not announced again.
        self._exhausted_announced = status.state is State.GAVE_UP
        self._healthy_since: float | None = None  # monotonic; for backoff_reset
        self._start_until: float | None = None  # monotonic end of the start period
        self._window: RestartWindow | None = None  # only with restart_window
        self._flaps: FlapHistory | None = None  # only with flap_threshold
        status.state = State.STARTING
        status.healthy = False
        status.checks_stopped = False  # a daemon start checks again
        status.restart_held = ""  # judged again at the first failing check
        self.configure(settings, dependency)
        self._begin_start_period()

    def configure(
        self, settings: PolicySettings, dependency: DependencyLookup | None = None
    ) -> None:
        """Take (new) settings, at start or on a reload: counts, verdict and pacing are kept."""
        s = self.status
        self.settings = settings
        self._dependency = dependency
        mono = self.clock.monotonic()
        if settings.restart_window and settings.max_restarts:
            if self._window is None:
                self._window = RestartWindow(s, self.clock)
            self._window.configure(settings.max_restarts, settings.restart_window, mono)
        else:
            self._window = None
            s.recent_restarts = ()
        if settings.flap_threshold:
            if self._flaps is None:
                self._flaps = FlapHistory(s, self.clock)
            self._flaps.configure(settings.flap_threshold, settings.flap_window, mono)
        else:
            self._flaps = None
            s.verdict_changes = ()
            s.flapping, s.flapping_since = False, None
        if settings.on_exhausted != STOP:
            s.checks_stopped = False
        if not settings.restart_backoff:
            s.current_restart_delay = None
        if not settings.start_period:
            self._end_start_period()

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
            return self._on_success(now)
        return self._on_failure(result)

    def on_restart_outcome(self, error: str | None) -> Decision:
        """Report how the restart asked for by the last decision went (None: it succeeded)."""
        s = self.status
        self.restart_in_flight = False
        mono = self.clock.monotonic()
        self._last_attempt = mono
        decision = Decision()
        attempt = s.restart_count + s.restart_failures + 1  # failed attempts count too
        if error is None:
            now = self.clock.now()
            s.restart_count += 1
            s.last_restart = now
            s.consecutive_fails = 0
            s.consecutive_successes = 0
            s.last_restart_error = ""
            if self._window is not None:
                self._window.record(mono, now)
            self._begin_start_period()
            return decision  # state stays RESTARTING until a result decides
        s.restart_failures += 1
        s.last_restart_error = error
        previous = s.state
        s.state = State.UNHEALTHY
        delay = durations.format_seconds(self._delay())
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

    def reset(self) -> Decision:
        """``healthd reset``: the restart budget, the backoff and the flap history start over;
        a workload that gave up is unhealthy again, so its next failing check may restart it
        (still no sooner than ``restart_delay`` after the last attempt)."""
        s = self.status
        previous = s.state
        reset_budget(s)
        for window in (self._window, self._flaps):
            if window is not None:
                window.clear()
        self._exhausted_announced = False
        left = self.budget_left()
        budget = "unlimited" if left is None else f"{left} restart{'s' if left != 1 else ''}"
        return Decision(
            [
                self._event(
                    EventType.RESET,
                    f"restart budget restored ({budget}); backoff and flap history cleared",
                    previous,
                    restart_count=s.restart_count,
                    budget_left=left,
                )
            ]
        )

    # -- queries --------------------------------------------------------------------------

    def next_restart_at(self) -> float | None:
        """Monotonic time before which no restart may start, or None if one could start now."""
        if self._last_attempt is None:
            return None
        due = self._last_attempt + self._delay()
        return due if due > self.clock.monotonic() else None

    def budget_left(self) -> int | None:
        """Restarts left, or None when unlimited. The budget counts the successful restarts
        within the window, or since the last reset: ``restart_count`` is the lifetime total,
        and a file the reference wrote has no ``restart_count_at_reset``, so its budget means
        what it meant there."""
        s = self.status
        if not self.settings.max_restarts:
            return None
        if self._window is not None:
            used = self._window.used(self.clock.monotonic())
        else:
            used = max(0, s.restart_count - s.restart_count_at_reset)
        return max(0, self.settings.max_restarts - used)

    def budget_frees_at(self) -> float | None:
        """With a window and the budget spent: the monotonic time a restart is allowed again
        (the oldest restart counted leaves the window). None otherwise."""
        if self._window is None:
            return None
        return self._window.frees_at(self.clock.monotonic())

    def restart_delay_now(self) -> float:
        """The delay that paces the next attempt after the last one (backoff included)."""
        return self._delay()

    # -- internals --------------------------------------------------------------------------

    def _on_success(self, now: datetime) -> Decision:
        s = self.status
        s.consecutive_fails = 0
        s.last_healthy = now
        s.last_error = ""
        s.checks_stopped = False  # it answers again: watch it again
        if self._start_until is not None:
            self._end_start_period()
        if s.state is State.HEALTHY:
            if self._flaps is None and s.current_restart_delay is None:
                return _QUIET  # the common case, kept cheap
            mono = self.clock.monotonic()
            self._settle_backoff(mono)
            events: list[Event] = []
            self._review_flapping(mono, events)
            return Decision(events) if events else _QUIET
        mono = self.clock.monotonic()
        events = []
        self._review_flapping(mono, events)
        s.consecutive_successes += 1
        needed = 1 if self.verdict is True else self.settings.success_threshold
        if s.consecutive_successes < needed:
            return Decision(events) if events else _QUIET
        previous = s.state
        s.state = State.HEALTHY
        s.healthy = True
        s.consecutive_successes = 0
        s.restart_held = ""
        self._exhausted_announced = False
        self._healthy_since = mono
        verdict, self.verdict = self.verdict, True
        if verdict is False:
            details = {"successes": needed} if needed > 1 else {}
            events.append(
                self._event(EventType.HEALTHY, "health check recovered", previous, **details)
            )
            self._verdict_changed(mono, events)
        return Decision(events) if events else _QUIET

    def _on_failure(self, result: CheckResult) -> Decision:
        s = self.status
        mono = self.clock.monotonic()
        decision = Decision()
        events = decision.events
        s.total_fails += 1
        s.consecutive_successes = 0
        s.last_error = result.error
        starting = self._in_start_period(mono)
        if not starting:
            s.consecutive_fails += 1
        events.append(self._check_fail(result, starting))
        self._review_flapping(mono, events)
        if starting or s.consecutive_fails < self.settings.retries:
            return decision
        s.healthy = False
        if s.state not in _UNHEALTHY_STATES or s.state is State.RESTARTING:
            previous = s.state
            if previous is State.HEALTHY:
                self._settle_backoff(mono)
                self._healthy_since = None
            s.state = State.UNHEALTHY
            if self.verdict is not False:
                events.append(
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
                self._verdict_changed(mono, events)
        if self.settings.auto_restart:
            self._consider_restart(decision)
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
            self._end_start_period()
            return _QUIET
        s.total_fails += 1
        s.consecutive_successes = 0
        starting = self._in_start_period(self.clock.monotonic())
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

    def _consider_restart(self, decision: Decision) -> None:
        s = self.status
        if self.restart_in_flight:
            return
        if self.budget_left() == 0:
            self._give_up(decision)
            return
        held = self._held_reason()
        if held:
            if held != s.restart_held:
                s.restart_held = held
                decision.events.append(
                    self._event(
                        EventType.RESTART_HELD, f"restart held: {held}", s.state, reason=held
                    )
                )
            return
        s.restart_held = ""
        if self.next_restart_at() is not None:
            return  # too soon after the last attempt; a later failing check will retry
        attempt = s.restart_count + s.restart_failures + 1  # failed attempts count too
        previous = s.state
        st = self.settings
        if st.restart_backoff:
            current = s.current_restart_delay
            doubled = st.restart_delay if current is None else current * 2
            s.current_restart_delay = min(doubled, max(st.max_restart_delay, st.restart_delay))
        s.state = State.RESTARTING
        s.checks_stopped = False
        self.restart_in_flight = True
        self._last_attempt = self.clock.monotonic()
        s.last_restart_attempt = self.clock.now()
        decision.restart = True
        decision.events.append(
            self._event(
                EventType.RESTART, f"auto-restarting (attempt {attempt})", previous, attempt=attempt
            )
        )

    def _give_up(self, decision: Decision) -> None:
        s = self.status
        st = self.settings
        previous: State = s.state
        s.state = State.GAVE_UP
        s.restart_held = ""
        stop = st.on_exhausted == STOP
        if stop:
            s.checks_stopped = True
        if self._exhausted_announced:
            return
        self._exhausted_announced = True
        details: dict[str, object] = {"max_restarts": st.max_restarts}
        if st.restart_window:
            frees = self.budget_frees_at()
            wait = round(max(0.0, (frees or 0.0) - self.clock.monotonic()), 3)
            details["restart_window"] = st.restart_window
            details["budget_frees_in"] = wait
            spent = (
                f"restart budget of {st.max_restarts} in "
                f"{durations.format_seconds(st.restart_window)} spent"
            )
            resume = f"restarts resume in {durations.format_seconds(wait)}"
            if stop:
                message = f"{spent}; checks stopped, {resume} (or after `healthd reset`)"
            else:
                message = f"{spent}; {resume}, checks go on"
        else:
            spent = f"restart budget of {st.max_restarts} spent; no more restarts"
            if stop:
                message = f"{spent}, checks stopped until `healthd reset` or a reload"
            else:
                message = f"{spent}, checks go on"
        if stop:
            details["on_exhausted"] = STOP
        decision.events.append(
            self._event(EventType.RESTART_EXHAUSTED, message, previous, **details)
        )

    def _held_reason(self) -> str:
        """Why a restart that is due must wait, or "" when nothing holds it."""
        if self.status.flapping:
            return "flapping"
        if self._dependency is None:
            return ""
        for name in self.settings.depends_on:
            dep = self._dependency(name)
            if dep is None:
                continue
            if dep.paused:
                return f"dependency {name} paused"
            if dep.state is not State.HEALTHY:
                return f"dependency {name} {dep.state.value}"
        return ""

    def _delay(self) -> float:
        st = self.settings
        current = self.status.current_restart_delay
        if not st.restart_backoff or current is None:
            return st.restart_delay
        return min(max(current, st.restart_delay), max(st.max_restart_delay, st.restart_delay))

    def _settle_backoff(self, mono: float) -> None:
        """After ``backoff_reset`` of continuous health the backoff starts over."""
        s = self.status
        if s.current_restart_delay is None or self._healthy_since is None:
            return
        if mono - self._healthy_since >= self.settings.backoff_reset:
            s.current_restart_delay = None

    def _begin_start_period(self) -> None:
        period = self.settings.start_period
        if period <= 0:
            self._end_start_period()
            return
        self._start_until = self.clock.monotonic() + period
        self.status.starting_until = self.clock.now() + timedelta(seconds=period)

    def _end_start_period(self) -> None:
        self._start_until = None
        self.status.starting_until = None

    def _in_start_period(self, mono: float) -> bool:
        if self._start_until is None:
            return False
        if mono < self._start_until:
            return True
        self._end_start_period()
        return False

    def _verdict_changed(self, mono: float, events: list[Event]) -> None:
        """A ``healthy`` or ``unhealthy`` event went out: count it for flap detection."""
        if self._flaps is None:
            return
        count = self._flaps.changed(mono, self.clock.now())
        if count is None:
            return
        st = self.settings
        window = durations.format_seconds(st.flap_window)
        held = "; restarts are held until it is stable" if st.auto_restart else ""
        events.append(
            self._event(
                EventType.FLAPPING,
                f"flapping: the verdict changed {count} times within {window}{held}",
                self.status.state,
                changes=count,
                flap_threshold=st.flap_threshold,
                flap_window=st.flap_window,
            )
        )

    def _review_flapping(self, mono: float, events: list[Event]) -> None:
        """End flapping once fewer than ``flap_threshold`` changes are left in the window."""
        if self._flaps is None:
            return
        count = self._flaps.review(mono)
        if count is None:
            return
        s = self.status
        if s.restart_held == "flapping":
            s.restart_held = ""
        window = durations.format_seconds(self.settings.flap_window)
        events.append(
            self._event(
                EventType.FLAPPING_STOPPED,
                f"stable again: {count} verdict changes within {window}",
                s.state,
                changes=count,
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
        elapsed = min(max(elapsed, 0.0), self._delay())
        return self.clock.monotonic() - elapsed


def reset_budget(status: WorkloadStatus) -> None:
    """What ``healthd reset`` restores, on the status alone (also used on statuses.json when
    no daemon runs). ``restart_count`` stays the lifetime total; the budget counts from it."""
    status.restart_count_at_reset = status.restart_count
    status.recent_restarts = ()
    status.current_restart_delay = None
    status.verdict_changes = ()
    status.flapping = False
    status.flapping_since = None
    status.restart_held = ""
    status.checks_stopped = False
    if status.state is State.GAVE_UP:
        status.state = State.UNHEALTHY


def _verdict_of(status: WorkloadStatus) -> bool | None:
    """The verdict a saved status had announced; None when it was never decided."""
    if status.state in _UNHEALTHY_STATES:
        return False
    if status.state is State.HEALTHY:
        return True
    return None
