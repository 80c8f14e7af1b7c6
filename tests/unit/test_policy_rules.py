"""Issue 7's restart policies in the pure state machine, driven by a manual clock: rules that
span minutes are played out in microseconds. The basic rules are in test_policy.py."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import timedelta

import pytest

from healthd.engine.policy import Decision, PolicySettings, WorkloadPolicy, reset_budget
from healthd.model import CheckResult, EventType, State, WorkloadStatus
from healthd.testing import ManualClock, RecordingSink

OK = CheckResult(True, 0.01)
FAIL = CheckResult(False, 0.02, "connection refused")
E = EventType
MINUTE = 60.0


class Harness:
    """A policy, its clock, the statuses of its dependencies, and every event it made."""

    def __init__(
        self,
        settings: PolicySettings,
        status: WorkloadStatus | None = None,
        clock: ManualClock | None = None,
    ) -> None:
        self.clock = clock or ManualClock()
        self.sink = RecordingSink()
        self.status = status or WorkloadStatus(workload="web")
        self.others: dict[str, WorkloadStatus] = {}
        self.policy = WorkloadPolicy(settings, self.status, self.clock, self.others.get)
        self.restarts: list[float] = []  # monotonic times of restarts asked for

    def publish(self, decision: Decision) -> Decision:
        for event in decision.events:
            self.sink.publish(event)
        return decision

    def result(self, result: CheckResult) -> Decision:
        decision = self.publish(self.policy.on_result(result))
        if decision.restart:
            self.restarts.append(self.clock.monotonic())
        return decision

    def ok(self, times: int = 1) -> Decision:
        decision = Decision()
        for _ in range(times):
            decision = self.result(OK)
        return decision

    def fail(self, times: int = 1) -> Decision:
        decision = Decision()
        for _ in range(times):
            decision = self.result(FAIL)
        return decision

    def restarted(self, error: str | None = None) -> Decision:
        return self.publish(self.policy.on_restart_outcome(error))

    def state(self) -> State:
        return self.status.state

    def types(self) -> list[EventType]:
        types = self.sink.types()
        self.sink.clear()
        return types

    def crash_loop(self, seconds: float, step: float = 1.0) -> None:
        """A workload that never comes back: a failing check every ``step`` seconds, each
        restart asked for succeeding (the command ran) without helping."""
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            if self.fail().restart:
                self.restarted(None)
            self.clock.advance(step)

    def dependency(self, name: str, state: State, *, paused: bool = False) -> WorkloadStatus:
        status = WorkloadStatus(workload=name, state=state, healthy=state is State.HEALTHY)
        status.paused = paused
        self.others[name] = status
        return status


def now(h: Harness) -> WorkloadStatus:
    """The status as it is now (mypy would keep what an earlier assert narrowed ``h.status.x``
    to, across the calls that change it)."""
    return h.status


def settings(**fields: object) -> PolicySettings:
    """Auto-restart after one failure, 10 s apart, unless told otherwise."""
    base = PolicySettings(retries=1, auto_restart=True, restart_delay=10.0)
    return replace(base, **fields)  # type: ignore[arg-type]


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


# -- success_threshold ---------------------------------------------------------------------------


def test_a_new_workload_needs_success_threshold_successes_to_be_healthy() -> None:
    h = Harness(settings(success_threshold=3))
    h.ok(2)
    assert (h.state(), h.status.healthy, h.status.consecutive_successes) == (
        State.STARTING,
        False,
        2,
    )
    h.ok()
    assert (h.state(), h.status.healthy, h.status.consecutive_successes) == (
        State.HEALTHY,
        True,
        0,
    )
    assert h.types() == []  # never judged before: nothing to announce


def test_a_workload_healthy_before_a_daemon_restart_needs_one_success() -> None:
    saved = WorkloadStatus(workload="web", state=State.HEALTHY, healthy=True, total_checks=9)
    h = Harness(settings(success_threshold=3), saved)
    assert h.state() is State.STARTING
    h.ok()
    assert h.state() is State.HEALTHY


def test_recovery_needs_the_threshold_in_a_row_and_is_announced_once() -> None:
    h = Harness(settings(auto_restart=False, retries=2, success_threshold=3))
    h.fail(2)
    assert h.types() == [E.CHECK_FAIL, E.CHECK_FAIL, E.UNHEALTHY]
    h.ok(2)
    h.fail()  # the run of successes is broken: count again
    assert (h.state(), h.status.consecutive_successes, h.status.consecutive_fails) == (
        State.UNHEALTHY,
        0,
        1,
    )
    h.ok(2)
    assert h.state() is State.UNHEALTHY
    h.ok()
    assert h.state() is State.HEALTHY
    events = h.sink.events
    assert [e.type for e in events] == [E.CHECK_FAIL, E.HEALTHY]
    assert (events[1].state_from, events[1].details) == (State.UNHEALTHY, {"successes": 3})
    assert events[1].message == "health check recovered"


def test_a_restarted_workload_stays_restarting_until_the_threshold() -> None:
    h = Harness(settings(retries=2, success_threshold=2))
    h.fail(2)
    h.restarted(None)
    h.ok()
    assert h.state() is State.RESTARTING
    h.fail()  # below retries: still proving itself
    h.ok()
    assert h.state() is State.RESTARTING
    h.ok()
    assert h.state() is State.HEALTHY
    assert h.types()[-1] is E.HEALTHY


def test_a_success_below_the_threshold_resets_the_failure_count() -> None:
    h = Harness(settings(retries=3, success_threshold=5))
    h.fail(3)
    assert len(h.restarts) == 1
    h.restarted(None)
    h.clock.advance(60)
    h.fail(2)
    h.ok()
    h.fail(2)  # two in a row again, below retries: no second restart
    assert len(h.restarts) == 1
    h.fail()
    assert len(h.restarts) == 2


# -- start_period --------------------------------------------------------------------------------


def test_failures_in_the_start_period_are_reported_but_not_counted() -> None:
    h = Harness(settings(start_period=5 * MINUTE, retries=3))
    assert h.status.starting_until == h.clock.now() + timedelta(minutes=5)
    for _ in range(9):  # a failing check every 30 s for 4.5 minutes
        h.fail()
        h.clock.advance(30)
    assert (h.state(), h.status.consecutive_fails, h.status.total_fails) == (State.STARTING, 0, 9)
    assert h.restarts == []
    assert h.sink.types() == [E.CHECK_FAIL] * 9
    assert h.sink.events[-1].details == {
        "duration": 0.02,
        "consecutive_fails": 0,
        "start_period": True,
    }
    h.sink.clear()
    h.clock.advance(30)  # 5 minutes are over: failures count now
    h.fail(3)
    assert now(h).starting_until is None
    assert h.types() == [E.CHECK_FAIL, E.CHECK_FAIL, E.CHECK_FAIL, E.UNHEALTHY, E.RESTART]
    assert len(h.restarts) == 1


def test_a_success_ends_the_start_period() -> None:
    h = Harness(settings(start_period=5 * MINUTE, retries=2, auto_restart=False))
    h.fail()
    assert h.status.consecutive_fails == 0
    h.clock.advance(10)
    h.ok()
    assert (h.state(), h.status.starting_until) == (State.HEALTHY, None)
    h.fail(2)  # well within the 5 minutes, but the period is over
    assert h.state() is State.UNHEALTHY


def test_the_start_period_begins_again_after_each_successful_restart() -> None:
    h = Harness(settings(start_period=60.0, retries=2, restart_delay=1.0))
    h.ok()
    h.fail(2)
    assert len(h.restarts) == 1
    h.restarted(None)
    assert h.status.starting_until == h.clock.now() + timedelta(seconds=60)
    for _ in range(5):  # 50 s of failures after the restart: not counted
        h.clock.advance(10)
        h.fail()
    assert (h.state(), h.status.consecutive_fails, len(h.restarts)) == (State.RESTARTING, 0, 1)
    h.clock.advance(10)
    h.fail(2)
    assert len(h.restarts) == 2
    # a failed restart attempt starts no period: its failures count at once
    h.restarted("boom")
    assert now(h).starting_until is None


def test_failures_while_paused_in_the_start_period_are_not_counted_either() -> None:
    h = Harness(settings(start_period=60.0, retries=1))
    h.policy.pause("deploy")
    h.fail(3)
    assert h.status.consecutive_fails == 0
    h.policy.resume()
    h.clock.advance(61)
    assert h.fail().restart is True


# -- restart_backoff -----------------------------------------------------------------------------


def test_backoff_doubles_the_delay_up_to_the_cap() -> None:
    h = Harness(settings(restart_backoff=True, restart_delay=10.0, max_restart_delay=80.0))
    h.crash_loop(12 * MINUTE)
    assert gaps(h.restarts)[:7] == [10, 20, 40, 80, 80, 80, 80]
    assert h.status.current_restart_delay == 80
    assert h.policy.restart_delay_now() == 80


def test_without_backoff_the_delay_stays() -> None:
    h = Harness(settings(restart_delay=10.0))
    h.crash_loop(2 * MINUTE)
    assert set(gaps(h.restarts)) == {10}
    assert now(h).current_restart_delay is None


def test_failed_attempts_double_too_and_say_the_delay() -> None:
    h = Harness(settings(restart_backoff=True, restart_delay=5.0, max_restart_delay=3600.0))
    for _ in range(4):
        while not h.fail().restart:
            h.clock.advance(1)
        h.restarted("exit status 1")
    messages = [e.message for e in h.sink.events if e.type is E.RESTART_FAILED]
    assert [m.rsplit("next try in ", 1)[1] for m in messages] == [
        "5s at the earliest",
        "10s at the earliest",
        "20s at the earliest",
        "40s at the earliest",
    ]
    assert gaps(h.restarts) == [5, 10, 20]


def test_backoff_starts_over_after_backoff_reset_of_continuous_health() -> None:
    h = Harness(
        settings(
            restart_backoff=True, restart_delay=10.0, max_restart_delay=300.0, backoff_reset=600.0
        )
    )
    h.crash_loop(5 * MINUTE)
    assert h.status.current_restart_delay == 160
    h.clock.advance(200)
    h.ok()  # healthy again
    for _ in range(9):  # 9 minutes of health: not enough
        h.clock.advance(MINUTE)
        h.ok()
    assert h.status.current_restart_delay == 160
    h.clock.advance(MINUTE)
    h.ok()
    assert now(h).current_restart_delay is None
    h.restarts.clear()
    h.crash_loop(MINUTE)
    assert gaps(h.restarts)[:2] == [10, 20]


def test_backoff_keeps_growing_when_health_does_not_last() -> None:
    h = Harness(settings(restart_backoff=True, restart_delay=10.0, backoff_reset=600.0))
    h.crash_loop(30)  # attempts at 0, 10 (delay now 20)
    h.clock.advance(30)
    h.ok()
    h.clock.advance(5 * MINUTE)  # healthy for 5 minutes, then down again
    h.restarts.clear()
    h.crash_loop(3 * MINUTE)
    # Between attempts, as restart_delay is: the first of the new episode goes at once.
    assert gaps(h.restarts)[:2] == [40, 80]


def test_the_backoff_delay_survives_a_daemon_restart() -> None:
    clock = ManualClock()
    h = Harness(settings(restart_backoff=True, restart_delay=10.0), clock=clock)
    h.crash_loop(80)  # attempts at 0, 10, 30, 70: delay now 80
    assert h.status.current_restart_delay == 80
    assert h.restarts[-1] == clock.monotonic() - 10  # the last attempt, 10 s ago
    clock.advance(30)
    again = Harness(settings(restart_backoff=True, restart_delay=10.0), h.status, clock)
    start = clock.monotonic()
    again.crash_loop(4 * MINUTE)
    assert again.restarts[0] - start == pytest.approx(80 - 40, abs=1)
    assert gaps(again.restarts)[0] == 160


# -- restart_window and on_exhausted ------------------------------------------------------------


def test_the_window_counts_restarts_in_it_and_frees_the_budget_by_itself() -> None:
    h = Harness(settings(max_restarts=2, restart_window=10 * MINUTE, restart_delay=MINUTE))
    h.crash_loop(2 * MINUTE + 1)  # restarts at 0 and 60 s
    assert len(h.restarts) == 2
    assert h.state() is State.GAVE_UP
    exhausted = [e for e in h.sink.events if e.type is E.RESTART_EXHAUSTED]
    assert len(exhausted) == 1
    # spent at the first failure after the second restart (61 s): frees 600 s after the first
    assert exhausted[0].message == (
        "restart budget of 2 in 10m0s spent; restarts resume in 8m59s, checks go on"
    )
    assert exhausted[0].details == {
        "max_restarts": 2,
        "restart_window": 600.0,
        "budget_frees_in": 539.0,
    }
    assert h.policy.budget_left() == 0
    assert h.policy.budget_frees_at() == h.restarts[0] + 600
    h.sink.clear()
    h.crash_loop(7 * MINUTE)  # still within the window: nothing
    assert (len(h.restarts), h.types().count(E.RESTART)) == (2, 0)
    h.crash_loop(MINUTE)  # the first restart left the window: a restart again, from gave_up
    assert len(h.restarts) == 3
    restart = next(e for e in h.sink.events if e.type is E.RESTART)
    assert restart.state_from is State.GAVE_UP
    assert h.restarts[2] - h.restarts[0] == pytest.approx(600, abs=1.01)
    # each restart leaving the window allows one more; the episode was announced already
    h.crash_loop(2 * MINUTE)
    assert gaps(h.restarts) == [60, 540, 60]
    assert h.state() is State.GAVE_UP
    assert h.types().count(E.RESTART_EXHAUSTED) == 0


def test_the_window_survives_a_daemon_restart_and_a_wall_clock_jump() -> None:
    clock = ManualClock()
    rules = settings(max_restarts=2, restart_window=10 * MINUTE, restart_delay=1.0)
    h = Harness(rules, clock=clock)
    h.crash_loop(5)
    assert len(h.status.recent_restarts) == 2
    clock.advance(MINUTE)
    clock.jump_wall(-3600)  # the wall clock went back an hour before the daemon restarted
    again = Harness(rules, h.status, clock)
    assert again.policy.budget_left() == 0
    again.crash_loop(5 * MINUTE)
    assert again.restarts == []
    assert again.state() is State.GAVE_UP
    assert again.types().count(E.RESTART_EXHAUSTED) == 0  # announced before the restart


def test_on_exhausted_stop_stops_checking_until_the_budget_frees() -> None:
    h = Harness(settings(max_restarts=1, on_exhausted="stop"))
    h.crash_loop(11)
    assert (h.state(), h.status.checks_stopped) == (State.GAVE_UP, True)
    [exhausted] = [e for e in h.sink.events if e.type is E.RESTART_EXHAUSTED]
    assert exhausted.message == (
        "restart budget of 1 spent; no more restarts, checks stopped until `healthd reset` or "
        "a reload"
    )
    assert exhausted.details == {"max_restarts": 1, "on_exhausted": "stop"}
    assert h.policy.budget_frees_at() is None  # no window: only a reset helps
    h.ok()  # a check asked for by hand answers: it is watched again
    assert now(h).checks_stopped is False


def test_on_exhausted_stop_with_a_window_says_when_restarts_resume() -> None:
    h = Harness(settings(max_restarts=1, restart_window=MINUTE, on_exhausted="stop"))
    h.crash_loop(2)
    assert now(h).checks_stopped is True
    assert h.sink.events[-1].message == (
        "restart budget of 1 in 1m0s spent; checks stopped, restarts resume in 59s "
        "(or after `healthd reset`)"
    )
    frees = h.policy.budget_frees_at()
    assert frees == h.restarts[0] + MINUTE
    h.clock.advance(frees - h.clock.monotonic())
    assert h.fail().restart is True
    assert now(h).checks_stopped is False


def test_a_reference_status_file_keeps_its_budget_meaning() -> None:
    # The reference counts max_restarts against restart_count, forever: so does healthd.
    saved = WorkloadStatus(workload="web", state=State.UNHEALTHY, restart_count=3)
    h = Harness(settings(max_restarts=3), saved)
    assert h.policy.budget_left() == 0
    assert h.fail().restart is False
    assert h.state() is State.GAVE_UP


# -- reset ----------------------------------------------------------------------------------------


def test_reset_restores_the_budget_but_keeps_the_lifetime_restart_count() -> None:
    h = Harness(settings(max_restarts=2, on_exhausted="stop"))
    h.crash_loop(30)
    assert (h.state(), h.status.restart_count, h.policy.budget_left()) == (State.GAVE_UP, 2, 0)
    h.sink.clear()
    decision = h.publish(h.policy.reset())
    assert decision.restart is False
    event = h.sink.events[0]
    assert (event.type, event.state_from, event.state_to) == (
        E.RESET,
        State.GAVE_UP,
        State.UNHEALTHY,
    )
    assert event.message == (
        "restart budget restored (2 restarts); backoff and flap history cleared"
    )
    assert event.details == {"restart_count": 2, "budget_left": 2}
    s = h.status
    assert (s.restart_count, s.restart_count_at_reset, s.checks_stopped) == (2, 2, False)
    assert h.fail().restart is True  # the delay since the last attempt has passed
    h.restarted(None)
    assert (s.restart_count, h.policy.budget_left()) == (3, 1)


def test_reset_clears_the_window_the_backoff_and_flapping() -> None:
    rules = settings(
        max_restarts=2,
        restart_window=MINUTE,
        restart_backoff=True,
        flap_threshold=1,
        retries=1,
    )
    h = Harness(rules)
    h.fail()
    h.restarted(None)
    h.clock.advance(10)
    h.ok()  # unhealthy, healthy: two verdict changes > 1: flapping
    assert now(h).flapping is True
    h.clock.advance(10)
    h.fail()
    assert h.status.restart_held == "flapping"
    h.policy.reset()
    s = h.status
    assert (s.flapping, s.verdict_changes, s.recent_restarts) == (False, (), ())
    assert (s.current_restart_delay, s.restart_held) == (None, "")
    assert h.policy.budget_left() == 2
    assert h.fail().restart is True


def test_reset_budget_on_a_saved_status() -> None:
    saved = WorkloadStatus(workload="web", state=State.GAVE_UP, restart_count=5)
    saved.checks_stopped = True
    reset_budget(saved)
    assert (saved.state, saved.restart_count, saved.restart_count_at_reset) == (
        State.UNHEALTHY,
        5,
        5,
    )
    h = Harness(settings(max_restarts=5), saved)
    assert h.policy.budget_left() == 5
    assert h.fail().restart is True


# -- flap detection ------------------------------------------------------------------------------


def flip(h: Harness, times: int, every: float = 20.0) -> None:
    """Fail and recover ``times`` times, ``every`` seconds apart: two verdict changes each."""
    for _ in range(times):
        h.fail()
        if h.policy.restart_in_flight:
            h.restarted(None)
        h.clock.advance(every)
        h.ok()
        h.clock.advance(every)


def test_flapping_is_announced_once_and_holds_restarts() -> None:
    h = Harness(settings(flap_threshold=4, flap_window=10 * MINUTE, restart_delay=1.0))
    flip(h, 2)  # four changes: not more than 4
    assert now(h).flapping is False
    assert len(h.restarts) == 2
    h.fail()  # the fifth change
    assert now(h).flapping is True
    flapping = [e for e in h.sink.events if e.type is E.FLAPPING]
    assert len(flapping) == 1
    assert flapping[0].message == (
        "flapping: the verdict changed 5 times within 10m0s; restarts are held until it is stable"
    )
    assert flapping[0].details == {"changes": 5, "flap_threshold": 4, "flap_window": 600.0}
    assert h.status.restart_held == "flapping"
    assert len(h.restarts) == 2  # held
    h.sink.clear()
    h.clock.advance(20)
    h.ok()
    flip(h, 3)
    types = h.types()
    assert E.FLAPPING not in types  # once
    assert types.count(E.RESTART_HELD) == 3  # one per unhealthy episode (reason set again)
    assert (types.count(E.UNHEALTHY), types.count(E.HEALTHY)) == (3, 4)  # verdicts still go out
    assert len(h.restarts) == 2


def test_flapping_stops_once_fewer_changes_are_in_the_window() -> None:
    h = Harness(settings(auto_restart=False, flap_threshold=2, flap_window=5 * MINUTE))
    flip(h, 2, every=10)
    assert now(h).flapping is True
    since = h.status.flapping_since
    h.sink.clear()
    for _ in range(9):  # healthy for 4.5 minutes: the changes are still in the window
        h.clock.advance(30)
        h.ok()
    assert (h.status.flapping, h.status.flapping_since) == (True, since)
    h.clock.advance(MINUTE)
    h.ok()
    assert now(h).flapping is False
    stopped = h.sink.events
    assert [e.type for e in stopped] == [E.FLAPPING_STOPPED]
    assert stopped[0].message.startswith("stable again: ")
    assert h.status.flapping_since is None


def test_flapping_needs_the_changes_within_the_window() -> None:
    h = Harness(settings(auto_restart=False, flap_threshold=2, flap_window=MINUTE))
    flip(h, 4, every=40)  # a change every 40 s: never three within a minute
    assert now(h).flapping is False
    assert E.FLAPPING not in h.types()


def test_flap_history_survives_a_daemon_restart() -> None:
    clock = ManualClock()
    rules = settings(auto_restart=False, flap_threshold=3, flap_window=10 * MINUTE)
    h = Harness(rules, clock=clock)
    flip(h, 2)
    assert (len(h.status.verdict_changes), h.status.flapping) == (4, True)
    again = Harness(rules, h.status, clock)
    assert again.status.flapping is True
    clock.advance(10 * MINUTE)
    again.ok()
    assert again.types() == [E.FLAPPING_STOPPED]


# -- depends_on ----------------------------------------------------------------------------------


def test_an_unhealthy_dependency_holds_restarts_until_it_recovers() -> None:
    h = Harness(settings(depends_on=("db",)))
    db = h.dependency("db", State.UNHEALTHY)
    h.fail()
    assert h.restarts == []
    assert h.status.restart_held == "dependency db unhealthy"
    held = h.sink.events[-1]
    assert (held.type, held.message, held.details) == (
        E.RESTART_HELD,
        "restart held: dependency db unhealthy",
        {"reason": "dependency db unhealthy"},
    )
    h.sink.clear()
    for _ in range(5):
        h.clock.advance(30)
        h.fail()
    assert h.types() == [E.CHECK_FAIL] * 5  # said once
    db.state = State.RESTARTING
    h.fail()
    assert h.status.restart_held == "dependency db restarting"
    assert h.types() == [E.CHECK_FAIL, E.RESTART_HELD]  # a new reason is said
    db.state, db.healthy = State.HEALTHY, True
    assert h.fail().restart is True
    assert h.status.restart_held == ""


@pytest.mark.parametrize(
    ("state", "paused", "reason"),
    [
        (State.STARTING, False, "dependency db starting"),
        (State.GAVE_UP, False, "dependency db gave_up"),
        (State.HEALTHY, True, "dependency db paused"),
    ],
)
def test_a_dependency_not_healthy_yet_or_paused_holds(
    state: State, paused: bool, reason: str
) -> None:
    h = Harness(settings(depends_on=("cache", "db")))
    h.dependency("cache", State.HEALTHY)
    h.dependency("db", state, paused=paused)
    assert h.fail().restart is False
    assert h.status.restart_held == reason


def test_a_dependency_not_monitored_holds_nothing() -> None:
    h = Harness(settings(depends_on=("ghost",)))
    assert h.fail().restart is True


def test_a_spent_budget_wins_over_a_hold() -> None:
    h = Harness(settings(depends_on=("db",), max_restarts=1))
    h.fail()
    h.restarted(None)
    h.dependency("db", State.UNHEALTHY)
    h.clock.advance(60)
    h.fail()
    assert (h.state(), h.status.restart_held) == (State.GAVE_UP, "")


def test_recovering_clears_the_hold() -> None:
    h = Harness(settings(depends_on=("db",), retries=1))
    h.dependency("db", State.UNHEALTHY)
    h.fail()
    h.ok()
    assert (h.state(), h.status.restart_held) == (State.HEALTHY, "")


def test_settings_changed_by_a_reload_keep_the_counts() -> None:
    h = Harness(settings(max_restarts=1, on_exhausted="stop", flap_threshold=2))
    h.crash_loop(11)
    assert now(h).checks_stopped is True
    h.policy.configure(settings(max_restarts=1), None)
    assert now(h).checks_stopped is False
    assert (h.status.verdict_changes, h.status.flapping) == ((), False)
    assert h.policy.budget_left() == 0
