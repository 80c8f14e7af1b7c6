"""WorkloadPolicy: the state machine driven by scripted check results and a manual clock."""

from __future__ import annotations

from datetime import timedelta

from healthd.engine.policy import Decision, PolicySettings, WorkloadPolicy
from healthd.model import CheckResult, EventType, State, WorkloadStatus
from healthd.testing import ManualClock, RecordingSink

OK = CheckResult(True, 0.01)
ERROR = "connection refused"
FAIL = CheckResult(False, 0.02, ERROR)
E = EventType


class Harness:
    """A policy, its clock, and every event its decisions produced."""

    def __init__(
        self,
        settings: PolicySettings,
        status: WorkloadStatus | None = None,
        clock: ManualClock | None = None,
    ) -> None:
        self.clock = clock or ManualClock()
        self.sink = RecordingSink()
        self.status = status or WorkloadStatus(workload="web")
        self.policy = WorkloadPolicy(settings, self.status, self.clock)

    def result(self, result: CheckResult) -> Decision:
        decision = self.policy.on_result(result)
        for event in decision.events:
            self.sink.publish(event)
        return decision

    def fail(self, times: int = 1) -> Decision:
        decision = Decision()
        for _ in range(times):
            decision = self.result(FAIL)
        return decision

    def restarted(self, error: str | None = None) -> Decision:
        decision = self.policy.on_restart_outcome(error)
        for event in decision.events:
            self.sink.publish(event)
        return decision

    def state(self) -> State:
        return self.status.state

    def types(self) -> list[EventType]:
        types = self.sink.types()
        self.sink.clear()
        return types


def restarting(retries: int = 2, max_restarts: int = 0, delay: float = 10.0) -> Harness:
    return Harness(PolicySettings(retries, True, max_restarts, delay))


def test_new_status_starts_as_starting() -> None:
    h = Harness(PolicySettings())
    assert (h.status.state, h.status.healthy) == (State.STARTING, False)


def test_first_success_is_healthy_without_an_event() -> None:
    h = Harness(PolicySettings())
    decision = h.result(OK)
    assert decision.events == []
    assert decision.restart is False
    assert (h.status.state, h.status.healthy) == (State.HEALTHY, True)
    assert h.status.last_healthy == h.clock.now()
    assert h.status.last_check == h.clock.now()
    assert (h.status.total_checks, h.status.total_fails, h.status.consecutive_fails) == (1, 0, 0)


def test_failures_below_threshold_keep_the_state_and_each_emits_check_fail() -> None:
    h = Harness(PolicySettings(retries=3))
    h.fail(2)
    assert (h.status.state, h.status.healthy) == (State.STARTING, False)
    assert h.sink.types() == [E.CHECK_FAIL, E.CHECK_FAIL]
    first, second = h.sink.events
    assert (first.message, first.details) == (ERROR, {"duration": 0.02, "consecutive_fails": 1})
    assert second.details["consecutive_fails"] == 2
    assert h.status.last_error == ERROR


def test_retries_failures_make_unhealthy_with_exactly_one_event() -> None:
    h = Harness(PolicySettings(retries=3))
    h.fail(3)
    assert h.sink.types() == [E.CHECK_FAIL] * 3 + [E.UNHEALTHY]
    unhealthy = h.sink.events[-1]
    assert (unhealthy.state_from, unhealthy.state_to) == (State.STARTING, State.UNHEALTHY)
    assert unhealthy.message == f"health check failed 3 times: {ERROR}"
    assert unhealthy.workload == "web"
    assert (h.status.state, h.status.healthy) == (State.UNHEALTHY, False)
    h.sink.clear()
    decision = h.fail(5)
    assert decision.restart is False
    assert h.sink.types() == [E.CHECK_FAIL] * 5
    assert (h.status.consecutive_fails, h.status.total_fails, h.status.total_checks) == (8, 8, 8)


def test_a_success_resets_consecutive_fails() -> None:
    h = Harness(PolicySettings(retries=3))
    h.fail(2)
    h.result(OK)
    assert (h.status.consecutive_fails, h.status.last_error) == (0, "")
    h.fail(2)
    assert h.sink.types() == [E.CHECK_FAIL] * 4
    assert (h.status.state, h.status.healthy) == (State.HEALTHY, True)
    assert (h.status.consecutive_fails, h.status.total_fails, h.status.total_checks) == (2, 4, 5)


def test_healthy_then_failures_announce_unhealthy_from_healthy() -> None:
    h = Harness(PolicySettings(retries=2))
    h.result(OK)
    h.fail(2)
    assert h.sink.types() == [E.CHECK_FAIL, E.CHECK_FAIL, E.UNHEALTHY]
    assert h.sink.events[-1].state_from is State.HEALTHY


def test_recovery_after_unhealthy_emits_healthy() -> None:
    h = Harness(PolicySettings(retries=2))
    h.fail(2)
    h.types()
    h.clock.advance(30)
    h.result(OK)
    assert h.sink.types() == [E.HEALTHY]
    event = h.sink.events[0]
    assert (event.state_from, event.state_to) == (State.UNHEALTHY, State.HEALTHY)
    assert (event.message, event.timestamp) == ("health check recovered", h.clock.now())
    h.sink.clear()
    h.result(OK)
    assert h.sink.events == []


def test_auto_restart_at_the_threshold() -> None:
    h = restarting(retries=2)
    assert h.fail().restart is False
    decision = h.fail()
    assert decision.restart is True
    assert h.sink.types() == [E.CHECK_FAIL, E.CHECK_FAIL, E.UNHEALTHY, E.RESTART]
    restart = h.sink.events[-1]
    assert (restart.state_from, restart.state_to) == (State.UNHEALTHY, State.RESTARTING)
    assert (restart.message, restart.details) == ("auto-restarting (attempt 1)", {"attempt": 1})
    assert h.state() is State.RESTARTING


def test_successful_restart_counts_and_waits_for_a_result() -> None:
    h = restarting(retries=2)
    h.fail(2)
    h.types()
    h.clock.advance(3)
    assert h.restarted(None).events == []
    assert (h.status.restart_count, h.status.last_restart) == (1, h.clock.now())
    assert (h.status.consecutive_fails, h.status.state) == (0, State.RESTARTING)
    assert h.fail().restart is False  # below the threshold: still proving itself
    assert h.state() is State.RESTARTING
    h.result(OK)
    assert h.types() == [E.CHECK_FAIL, E.HEALTHY]
    assert h.state() is State.HEALTHY


def test_no_second_restart_before_restart_delay() -> None:
    h = restarting(retries=2, delay=10.0)
    h.fail(2)
    h.restarted(None)
    start = h.clock.monotonic()
    assert h.policy.next_restart_at() == start + 10
    h.types()
    assert h.fail(2).restart is False
    assert h.types() == [E.CHECK_FAIL, E.CHECK_FAIL]  # verdict already announced
    assert h.state() is State.UNHEALTHY
    h.clock.advance(9.5)
    assert h.fail().restart is False
    h.clock.advance(0.5)
    assert h.policy.next_restart_at() is None
    assert h.fail().restart is True
    assert h.sink.events[-1].message == "auto-restarting (attempt 2)"


def test_failed_restart_does_not_count_and_waits_restart_delay() -> None:
    h = restarting(retries=2, delay=10.0)
    h.fail(2)
    h.types()
    h.clock.advance(2)
    h.restarted("boom")
    assert h.sink.types() == [E.RESTART_FAILED]
    event = h.sink.events[0]
    assert event.message == "restart attempt 1 failed: boom; next try in 10s at the earliest"
    assert event.details == {"attempt": 1, "error": "boom"}
    assert (event.state_from, event.state_to) == (State.RESTARTING, State.UNHEALTHY)
    s = h.status
    assert (s.restart_count, s.restart_failures, s.last_restart_error) == (0, 1, "boom")
    assert (s.last_restart, s.state) == (None, State.UNHEALTHY)
    h.types()
    assert h.fail().restart is False
    h.clock.advance(9.5)
    assert h.fail().restart is False
    h.clock.advance(0.5)
    assert h.fail().restart is True
    assert h.types() == [E.CHECK_FAIL] * 3 + [E.RESTART]
    h.restarted(None)
    assert (s.restart_count, s.restart_failures, s.last_restart_error) == (1, 1, "")


def test_max_restarts_gives_up_once_per_episode() -> None:
    h = restarting(retries=1, max_restarts=2, delay=10.0)
    for attempt in (1, 2):
        assert h.fail().restart is True
        h.restarted(None)
        assert h.policy.budget_left() == 2 - attempt
        h.clock.advance(10)
    h.types()
    decision = h.fail()
    assert decision.restart is False
    assert h.sink.types() == [E.CHECK_FAIL, E.RESTART_EXHAUSTED]
    exhausted = h.sink.events[-1]
    assert (exhausted.state_from, exhausted.state_to) == (State.UNHEALTHY, State.GAVE_UP)
    assert exhausted.message == "restart budget of 2 spent; no more restarts, checks go on"
    assert exhausted.details == {"max_restarts": 2}
    assert h.state() is State.GAVE_UP
    h.types()
    h.clock.advance(100)
    assert h.fail(4).restart is False
    assert h.types() == [E.CHECK_FAIL] * 4
    assert h.state() is State.GAVE_UP
    # recovery, then a new episode: announced again, and given up again
    h.result(OK)
    assert h.sink.events[-1].state_from is State.GAVE_UP
    h.fail()
    assert h.types() == [E.HEALTHY, E.CHECK_FAIL, E.UNHEALTHY, E.RESTART_EXHAUSTED]
    assert h.status.restart_count == 2


def test_max_restarts_zero_is_unlimited() -> None:
    h = restarting(retries=1, max_restarts=0, delay=1.0)
    for _ in range(25):
        assert h.fail().restart is True
        h.restarted(None)
        h.clock.advance(1)
    assert h.policy.budget_left() is None
    assert h.status.restart_count == 25
    assert E.RESTART_EXHAUSTED not in h.sink.types()


def test_auto_restart_false_never_restarts() -> None:
    h = Harness(PolicySettings(retries=1, auto_restart=False, restart_delay=1.0))
    for _ in range(10):
        assert h.fail().restart is False
        h.clock.advance(100)
    assert h.types() == [E.CHECK_FAIL, E.UNHEALTHY] + [E.CHECK_FAIL] * 9
    assert (h.status.state, h.status.restart_count) == (State.UNHEALTHY, 0)


def saved(state: State, **fields: object) -> WorkloadStatus:
    status = WorkloadStatus(workload="web", state=state, total_checks=40, total_fails=9)
    for name, value in fields.items():
        setattr(status, name, value)
    return status


def test_restored_status_keeps_budget_and_restart_delay() -> None:
    clock = ManualClock()
    last = clock.now() - timedelta(seconds=3)
    status = saved(State.UNHEALTHY, restart_count=2, last_restart=last)
    h = Harness(PolicySettings(2, True, max_restarts=3, restart_delay=10.0), status, clock)
    assert (status.state, status.healthy) == (State.STARTING, False)
    assert h.policy.budget_left() == 1
    assert h.policy.next_restart_at() == clock.monotonic() + 7
    assert h.fail(2).restart is False
    assert h.types() == [E.CHECK_FAIL, E.CHECK_FAIL]  # the episode was announced before
    clock.advance(6.5)
    assert h.fail().restart is False
    clock.advance(0.5)
    assert h.fail().restart is True
    assert h.sink.events[-1].message == "auto-restarting (attempt 3)"
    h.restarted(None)
    h.clock.advance(10)
    h.types()
    assert h.fail(2).restart is False
    assert h.types() == [E.CHECK_FAIL, E.CHECK_FAIL, E.RESTART_EXHAUSTED]


def test_wall_clock_jump_does_not_change_the_restart_delay() -> None:
    h = restarting(retries=1, delay=10.0)
    h.fail()
    h.restarted(None)
    h.clock.jump_wall(3600)
    assert h.fail().restart is False
    h.clock.jump_wall(-7200)
    assert h.fail().restart is False
    h.clock.advance(10)
    assert h.fail().restart is True


def test_restored_last_restart_in_the_future_waits_one_delay_only() -> None:
    # The wall clock went back since the last restart: wait restart_delay, not an hour more.
    clock = ManualClock()
    status = saved(State.UNHEALTHY, last_restart=clock.now() + timedelta(hours=1))
    policy = WorkloadPolicy(PolicySettings(1, True, 0, 10.0), status, clock)
    assert policy.next_restart_at() == clock.monotonic() + 10


def test_restored_last_restart_long_ago_allows_a_restart_at_once() -> None:
    clock = ManualClock()
    status = saved(State.UNHEALTHY, last_restart=clock.now() - timedelta(days=2))
    policy = WorkloadPolicy(PolicySettings(1, True, 0, 10.0), status, clock)
    assert policy.next_restart_at() is None
    assert policy.on_result(FAIL).restart is True


def test_restored_healthy_then_failures_emit_unhealthy() -> None:
    h = Harness(PolicySettings(retries=2), saved(State.HEALTHY, healthy=True))
    h.fail(2)
    assert h.sink.types() == [E.CHECK_FAIL, E.CHECK_FAIL, E.UNHEALTHY]
    assert h.sink.events[-1].state_from is State.STARTING


def test_restored_healthy_then_success_emits_nothing() -> None:
    h = Harness(PolicySettings(retries=2), saved(State.HEALTHY, healthy=True))
    h.result(OK)
    assert h.sink.events == []


def test_restored_unhealthy_then_success_emits_healthy() -> None:
    h = Harness(PolicySettings(retries=2), saved(State.UNHEALTHY))
    h.result(OK)
    assert h.sink.types() == [E.HEALTHY]
    event = h.sink.events[0]
    assert (event.state_from, event.state_to) == (State.STARTING, State.HEALTHY)
    assert h.status.total_checks == 41


def test_restored_gave_up_is_not_announced_again() -> None:
    saved = WorkloadStatus(workload="web", state=State.GAVE_UP, restart_count=1)
    h = Harness(PolicySettings(2, True, 1, 10.0), status=saved)
    h.fail(2)
    assert h.state() is State.GAVE_UP
    assert E.RESTART_EXHAUSTED not in h.types()
    h.result(OK)
    h.fail(2)  # a new episode after recovery is announced
    assert h.types().count(E.RESTART_EXHAUSTED) == 1


def test_the_unhealthy_event_says_which_check_failed_and_how() -> None:
    h = Harness(PolicySettings(retries=2))
    h.fail(2)
    unhealthy = h.sink.events[-1]
    assert unhealthy.type is E.UNHEALTHY
    assert unhealthy.details == {"error": ERROR, "duration": 0.02, "consecutive_fails": 2}


def test_attempts_are_numbered_across_failed_restarts() -> None:
    h = restarting(retries=2, delay=10.0)
    h.fail(2)
    for attempt in (1, 2):
        h.restarted("boom")
        assert h.sink.events[-1].details == {"attempt": attempt, "error": "boom"}
        h.clock.advance(10)
        h.fail()
        assert h.sink.events[-1].message == f"auto-restarting (attempt {attempt + 1})"


def test_failed_attempt_time_paces_restarts_after_a_daemon_restart() -> None:
    clock = ManualClock()
    h = Harness(PolicySettings(1, True, 0, 10.0), clock=clock)
    assert h.fail().restart
    h.restarted("boom")
    assert h.status.last_restart is None
    assert h.status.last_restart_attempt == clock.now()
    clock.advance(4)
    again = Harness(PolicySettings(1, True, 0, 10.0), status=h.status, clock=clock)
    assert not again.fail().restart
    clock.advance(6)
    assert again.fail().restart


# -- pause and resume (maintenance) -------------------------------------------------------------


def test_pause_sets_paused_at_and_reason_and_resume_clears_them() -> None:
    h = Harness(PolicySettings())
    assert (h.status.paused, h.status.paused_at, h.status.paused_reason) == (False, None, "")
    paused_at = h.clock.now()
    h.policy.pause("maintenance")
    assert (h.status.paused, h.status.paused_at, h.status.paused_reason) == (
        True,
        paused_at,
        "maintenance",
    )
    assert h.status.shown_state is State.PAUSED
    assert h.status.state is State.STARTING  # the machine's own state is kept underneath
    h.clock.advance(60)
    h.policy.pause("longer maintenance")  # pausing again: new reason, same start
    assert (h.status.paused_at, h.status.paused_reason) == (paused_at, "longer maintenance")
    h.policy.resume()
    s = h.status
    assert (s.paused, s.paused_at, s.paused_reason, s.shown_state) == (False, None, "", s.state)
    assert s.state is State.STARTING


def test_paused_failures_are_counted_without_transition_verdict_or_restart() -> None:
    h = restarting(retries=2, delay=1.0)
    h.result(OK)
    h.types()
    h.policy.pause()
    for n in range(1, 6):
        h.clock.advance(5)  # well past restart_delay: only the pause holds the restart back
        decision = h.fail()
        assert decision.restart is False
        assert h.status.consecutive_fails == n
    assert h.types() == [E.CHECK_FAIL] * 5
    s = h.status
    assert (s.state, s.shown_state, s.restart_count) == (State.HEALTHY, State.PAUSED, 0)
    assert s.healthy is True  # the verdict waits for the resume
    assert (s.total_checks, s.total_fails, s.last_error) == (6, 5, ERROR)
    assert s.last_check == h.clock.now()
    assert h.policy.restart_in_flight is False


def test_paused_check_fail_events_carry_the_count() -> None:
    h = Harness(PolicySettings(retries=1))
    h.policy.pause("upgrade")
    h.fail(2)
    assert [e.details["consecutive_fails"] for e in h.sink.events] == [1, 2]
    assert [e.message for e in h.sink.events] == [ERROR, ERROR]
    assert h.status.state is State.STARTING


def test_paused_success_resets_the_count_without_an_event() -> None:
    h = Harness(PolicySettings(retries=2))
    h.fail(2)
    h.types()
    h.policy.pause()
    h.clock.advance(1)
    assert h.result(OK).events == []
    s = h.status
    assert (s.consecutive_fails, s.last_error, s.last_healthy) == (0, "", h.clock.now())
    assert (s.state, s.healthy) == (State.UNHEALTHY, False)  # not announced while paused


def test_after_resume_the_next_failure_judges_the_counts_made_while_paused() -> None:
    h = restarting(retries=3, delay=1.0)
    h.result(OK)
    h.types()
    h.policy.pause()
    h.fail(4)
    h.types()
    h.policy.resume()
    decision = h.fail()
    assert decision.restart is True
    assert h.types() == [E.CHECK_FAIL, E.UNHEALTHY, E.RESTART]  # one unhealthy, one restart
    assert h.status.state is State.RESTARTING
    assert h.status.consecutive_fails == 5


def test_after_resume_the_unhealthy_event_says_how_many_failures() -> None:
    h = restarting(retries=3, delay=1.0)
    h.result(OK)
    h.policy.pause()
    h.fail(4)
    h.policy.resume()
    h.sink.clear()
    h.fail()
    unhealthy = h.sink.events[1]
    assert unhealthy.type is E.UNHEALTHY
    assert unhealthy.message == f"health check failed 5 times: {ERROR}"
    assert (unhealthy.state_from, unhealthy.state_to) == (State.HEALTHY, State.UNHEALTHY)
    restart = h.sink.events[2]
    assert (restart.state_from, restart.state_to) == (State.UNHEALTHY, State.RESTARTING)
    h.sink.clear()
    h.fail()  # the restart is in flight: no second one, no second announcement
    assert h.types() == [E.CHECK_FAIL]


def test_after_resume_without_auto_restart_unhealthy_but_no_restart() -> None:
    h = Harness(PolicySettings(retries=2, auto_restart=False))
    h.result(OK)
    h.policy.pause()
    h.fail(3)
    h.policy.resume()
    h.types()
    assert h.fail().restart is False
    assert h.types() == [E.CHECK_FAIL, E.UNHEALTHY]
    assert (h.status.state, h.status.healthy) == (State.UNHEALTHY, False)


def test_unhealthy_workload_paused_is_not_restarted_even_when_the_delay_has_passed() -> None:
    h = restarting(retries=1, delay=10.0)
    assert h.fail().restart is True
    h.restarted("boom")
    h.types()
    h.policy.pause("investigating")
    h.clock.advance(60)
    assert h.policy.next_restart_at() is None  # a restart would be allowed, but for the pause
    assert h.fail(3).restart is False
    assert h.types() == [E.CHECK_FAIL] * 3
    assert (h.status.state, h.status.restart_failures) == (State.UNHEALTHY, 1)
    h.policy.resume()
    assert h.fail().restart is True
    assert h.types() == [E.CHECK_FAIL, E.RESTART]  # the episode was announced before the pause


def test_recovered_during_the_pause_announces_healthy_at_the_first_success_after_resume() -> None:
    h = Harness(PolicySettings(retries=2))
    h.fail(2)
    assert h.types() == [E.CHECK_FAIL, E.CHECK_FAIL, E.UNHEALTHY]
    h.policy.pause()
    h.result(OK)
    h.result(OK)
    assert h.types() == []
    h.policy.resume()
    h.clock.advance(1)
    h.result(OK)
    assert h.sink.types() == [E.HEALTHY]
    event = h.sink.events[0]
    assert (event.state_from, event.state_to) == (State.UNHEALTHY, State.HEALTHY)
    assert (h.status.state, h.status.healthy) == (State.HEALTHY, True)
    h.sink.clear()
    h.result(OK)
    assert h.sink.events == []  # announced once


def test_healthy_paused_and_resumed_announces_nothing_on_success() -> None:
    h = Harness(PolicySettings(retries=2))
    h.result(OK)
    h.policy.pause()
    h.fail()  # below the threshold anyway
    h.result(OK)
    h.policy.resume()
    h.result(OK)
    assert h.types() == [E.CHECK_FAIL]
    assert h.status.state is State.HEALTHY
