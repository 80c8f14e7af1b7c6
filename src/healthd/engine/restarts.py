"""Restarts of an unhealthy workload with ``auto_restart``: when one is made, how they are
paced, and what happens once the budget is spent. ``policy.py`` asks at each failing check
that leaves the workload unhealthy, and reports how each restart went.

Rules:
- Restart when the budget allows (``max_restarts``, 0 is unlimited), nothing holds it
  (``holds.py``: flapping, a dependency) and the restart delay has passed since the last
  attempt; otherwise wait for a later failing check. With the budget spent the state is
  ``gave_up`` and ``restart_exhausted`` is emitted once per unhealthy episode (restarts a
  window allows anew are announced by their ``restart`` events). ``on_exhausted: stop`` also
  stops checking (``checks_stopped``) until ``healthd reset``, a reload, or (with a window)
  the budget frees.
- The budget counts successful restarts since the last ``reset`` (``restart_count`` stays
  the lifetime total), or with ``restart_window`` those within the window (``windows.py``):
  as old ones leave it, restarts resume by themselves.
- ``restart_backoff``: each attempt doubles the delay before the next one, from
  ``restart_delay`` up to ``max_restart_delay``; ``backoff_reset`` of continuous health (or a
  reset) starts it over (kubelet's CrashLoopBackOff).
- A restart that succeeds counts against the budget and leaves the workload ``restarting``
  until it proves itself (``policy.py`` also resets the failure count and starts the start
  period); one that fails emits ``restart_failed``, does not count, and is tried again after
  the delay.

The delay is measured on the monotonic clock; ``last_restart`` and ``last_restart_attempt``
(wall clock) only carry it across a daemon restart. ``reset_budget`` is what ``healthd reset``
restores on a status, also on statuses.json when no daemon runs.
"""

from __future__ import annotations

from healthd import durations
from healthd.engine.decision import Decision, transition
from healthd.engine.holds import DependencyLookup, held_reason
from healthd.engine.policy_settings import STOP, PolicySettings
from healthd.engine.windows import RestartWindow
from healthd.model import Clock, EventType, State, WorkloadStatus


class Restarts:
    __slots__ = (
        "_dependency",
        "_exhausted_announced",
        "_healthy_since",
        "_last_attempt",
        "_window",
        "clock",
        "in_flight",
        "settings",
        "status",
    )

    def __init__(self, settings: PolicySettings, status: WorkloadStatus, clock: Clock) -> None:
        """Before the policy sets the state to ``starting``: what the saved status says about
        the restarts made before a daemon restart is read here."""
        self.settings = settings
        self.status = status
        self.clock = clock
        self._dependency: DependencyLookup | None = None
        self.in_flight = False  # asked for by a decision, its outcome not reported yet
        self._last_attempt: float | None = self._restore_last_attempt()
        # An exhausted budget announced before a daemon restart is not announced again.
        self._exhausted_announced = status.state is State.GAVE_UP
        self._healthy_since: float | None = None  # monotonic; for backoff_reset
        self._window: RestartWindow | None = None  # only with restart_window

    def configure(
        self, settings: PolicySettings, dependency: DependencyLookup | None, mono: float
    ) -> None:
        s = self.status
        self.settings = settings
        self._dependency = dependency
        if settings.restart_window and settings.max_restarts:
            if self._window is None:
                self._window = RestartWindow(s, self.clock)
            self._window.configure(settings.max_restarts, settings.restart_window, mono)
        else:
            self._window = None
            s.recent_restarts = ()
        if settings.on_exhausted != STOP:
            s.checks_stopped = False
        if not settings.restart_backoff:
            s.current_restart_delay = None

    # -- inputs -------------------------------------------------------------------------

    def consider(self, decision: Decision) -> None:
        """The workload is unhealthy: restart it now if allowed (``decision.restart``), give
        up when the budget is spent, or wait (held, or too soon after the last attempt)."""
        s = self.status
        if self.in_flight:
            return
        if self.budget_left() == 0:
            self._give_up(decision)
            return
        held = held_reason(s, self.settings.depends_on, self._dependency)
        if held:
            if held != s.restart_held:
                s.restart_held = held
                decision.events.append(
                    transition(
                        s,
                        self.clock,
                        EventType.RESTART_HELD,
                        f"restart held: {held}",
                        s.state,
                        reason=held,
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
        self.in_flight = True
        self._last_attempt = self.clock.monotonic()
        s.last_restart_attempt = self.clock.now()
        decision.restart = True
        decision.events.append(
            transition(
                s,
                self.clock,
                EventType.RESTART,
                f"auto-restarting (attempt {attempt})",
                previous,
                attempt=attempt,
            )
        )

    def outcome(self, error: str | None) -> Decision:
        """How the restart asked for went (None: it succeeded)."""
        s = self.status
        self.in_flight = False
        mono = self.clock.monotonic()
        self._last_attempt = mono
        decision = Decision()
        attempt = s.restart_count + s.restart_failures + 1  # failed attempts count too
        if error is None:
            now = self.clock.now()
            s.restart_count += 1
            s.last_restart = now
            s.last_restart_error = ""
            if self._window is not None:
                self._window.record(mono, now)
            return decision  # state stays RESTARTING until a result decides
        s.restart_failures += 1
        s.last_restart_error = error
        previous = s.state
        s.state = State.UNHEALTHY
        delay = durations.format_seconds(self.delay())
        decision.events.append(
            transition(
                s,
                self.clock,
                EventType.RESTART_FAILED,
                f"restart attempt {attempt} failed: {error}; next try in {delay} at the earliest",
                previous,
                attempt=attempt,
                error=error,
            )
        )
        return decision

    def became_healthy(self, mono: float) -> None:
        """The verdict turned healthy: the next episode's exhaustion is announced again, and
        ``backoff_reset`` counts from now."""
        self._exhausted_announced = False
        self._healthy_since = mono

    def left_healthy(self, mono: float) -> None:
        self.settle_backoff(mono)
        self._healthy_since = None

    def settle_backoff(self, mono: float) -> None:
        """After ``backoff_reset`` of continuous health the backoff starts over."""
        s = self.status
        if s.current_restart_delay is None or self._healthy_since is None:
            return
        if mono - self._healthy_since >= self.settings.backoff_reset:
            s.current_restart_delay = None

    def reset(self) -> None:
        """``healthd reset``, with ``policy.reset_budget`` on the status: the window empties
        and a budget spent again is announced again."""
        if self._window is not None:
            self._window.clear()
        self._exhausted_announced = False

    # -- queries --------------------------------------------------------------------------

    def next_restart_at(self) -> float | None:
        """Monotonic time before which no restart may start, or None if one could start now."""
        if self._last_attempt is None:
            return None
        due = self._last_attempt + self.delay()
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

    def delay(self) -> float:
        """The delay that paces the next attempt after the last one (backoff included)."""
        st = self.settings
        current = self.status.current_restart_delay
        if not st.restart_backoff or current is None:
            return st.restart_delay
        return min(max(current, st.restart_delay), max(st.max_restart_delay, st.restart_delay))

    # -- internals --------------------------------------------------------------------------

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
            transition(s, self.clock, EventType.RESTART_EXHAUSTED, message, previous, **details)
        )

    def _restore_last_attempt(self) -> float | None:
        """Carry the restart delay across a daemon restart, immune to wall-clock jumps."""
        times = [t for t in (self.status.last_restart, self.status.last_restart_attempt) if t]
        if not times:
            return None
        last = max(times)
        elapsed = (self.clock.now() - last).total_seconds()
        elapsed = min(max(elapsed, 0.0), self.delay())
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
