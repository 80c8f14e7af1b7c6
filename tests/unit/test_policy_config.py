"""The restart-policy keys: loading, validation at FILE:LINE, rendering back, the settings the
state machine gets; their status fields in statuses.json; the depends_on graph review."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from healthd.config.editor import render
from healthd.config.loader import parse_text
from healthd.config.workload import WorkloadConfig
from healthd.engine.dependencies import review
from healthd.engine.policy import PolicySettings
from healthd.engine.workloads import policy_settings
from healthd.model import State, WorkloadStatus
from healthd.store.status import decode, encode, from_json, to_json

HEAD = "workload: w\ntype: tcp\nport: 5432\nhost: 127.0.0.1\n"
T0 = datetime(2026, 11, 28, 3, 2, 47, tzinfo=UTC)


def load(text: str) -> WorkloadConfig:
    cfg, problems = parse_text(HEAD + text, "w.yaml", "w")
    assert [str(p) for p in problems] == []
    assert cfg is not None
    return cfg


def problems_of(text: str) -> list[str]:
    cfg, problems = parse_text(HEAD + text, "w.yaml", "w")
    assert cfg is None
    return [str(p) for p in problems]


ALL_KEYS = """auto_restart: true
max_restarts: 5
restart_delay: 10s
success_threshold: 3
start_period: 1m30s
restart_backoff: true
max_restart_delay: 5m
backoff_reset: 10m
restart_window: 1h
on_exhausted: stop
flap_threshold: 4
flap_window: 10m
depends_on: [db, cache-1]
"""


def test_every_policy_key_loads_and_renders_back_unchanged() -> None:
    cfg = load(ALL_KEYS)
    assert (cfg.success_threshold, cfg.start_period, cfg.restart_backoff) == (3, 90.0, True)
    assert (cfg.max_restart_delay, cfg.backoff_reset, cfg.restart_window) == (300.0, 600.0, 3600.0)
    assert (cfg.on_exhausted, cfg.flap_threshold, cfg.flap_window) == ("stop", 4, 600.0)
    assert cfg.depends_on == ("db", "cache-1")
    text = render(cfg)
    assert "start_period: 1m30s\n" in text
    assert "depends_on:\n- db\n- cache-1\n" in text
    again, problems = parse_text(text, "w.yaml", "w")
    assert problems == []
    assert again == cfg


def test_a_reference_file_gets_the_reference_behaviour() -> None:
    cfg = load("auto_restart: true\nmax_restarts: 3\nrestart_delay: 30s\n")
    keys = set(cfg.to_yaml_mapping())
    assert not keys & {"success_threshold", "start_period", "restart_window", "depends_on"}
    assert policy_settings(cfg.with_defaults()) == PolicySettings(
        retries=3, auto_restart=True, max_restarts=3, restart_delay=30.0
    )


def test_policy_settings_from_every_key() -> None:
    settings = policy_settings(load(ALL_KEYS).with_defaults())
    assert settings == PolicySettings(
        retries=3,
        auto_restart=True,
        max_restarts=5,
        restart_delay=10.0,
        success_threshold=3,
        start_period=90.0,
        restart_backoff=True,
        max_restart_delay=300.0,
        backoff_reset=600.0,
        restart_window=3600.0,
        on_exhausted="stop",
        flap_threshold=4,
        flap_window=600.0,
        depends_on=("db", "cache-1"),
    )


def test_backoff_never_caps_below_a_long_restart_delay() -> None:
    cfg = load("restart_delay: 10m\nrestart_backoff: true\n")
    assert policy_settings(cfg.with_defaults()).max_restart_delay == 600.0


def test_switches_may_stay_in_the_file_while_turned_off() -> None:
    cfg = load(
        "restart_backoff: false\nmax_restart_delay: 5m\nflap_threshold: 0\nflap_window: 1m\n"
    )
    settings = policy_settings(cfg.with_defaults())
    assert (settings.restart_backoff, settings.flap_threshold) == (False, 0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("success_threshold: 0\n", "w.yaml:5: success_threshold: must be at least 1"),
        ("success_threshold: two\n", "w.yaml:5: success_threshold: expected an integer"),
        ("start_period: -1s\n", "w.yaml:5: start_period: must not be negative (0s: none)"),
        ("start_period: 30\n", "w.yaml:5: start_period: invalid duration '30': missing unit"),
        ("restart_backoff: maybe\n", "w.yaml:5: restart_backoff: expected true or false"),
        ("restart_window: 0s\n", "w.yaml:5: restart_window: must be greater than zero"),
        (
            "on_exhausted: halt\n",
            "w.yaml:5: on_exhausted: must be one of: keep_checking, stop (not 'halt')",
        ),
        ("flap_threshold: -1\n", "w.yaml:5: flap_threshold: must be from 0 (off) to 1000"),
        ("flap_window: 0s\n", "w.yaml:5: flap_window: must be greater than zero"),
        (
            "depends_on: db\n",
            "w.yaml:5: depends_on: expected a list of workload names, e.g. [db, cache]",
        ),
        ("depends_on: [db, db]\n", "w.yaml:5: depends_on: db is listed twice"),
        ("depends_on: [db/x]\n", "w.yaml:5: depends_on: invalid workload name 'db/x'"),
        ("depends_on: [~]\n", "w.yaml:5: depends_on: every entry must be a workload name"),
        ("depends_on: [w]\n", "w.yaml:5: depends_on: w cannot depend on itself"),
        (
            "restart_window: 1h\n",
            "w.yaml:5: restart_window: needs max_restarts: the window counts restarts against "
            "it, and 0 is unlimited",
        ),
        (
            "max_restarts: 1001\nrestart_window: 1h\n",
            "w.yaml:6: restart_window: max_restarts must be at most 1000 with a window",
        ),
        (
            "on_exhausted: stop\n",
            "w.yaml:5: on_exhausted: needs max_restarts: with 0 (unlimited) the budget is never "
            "spent",
        ),
        (
            "max_restart_delay: 5m\n",
            "w.yaml:5: max_restart_delay: only with restart_backoff (true, or false to turn it "
            "off for now)",
        ),
        ("backoff_reset: 5m\n", "w.yaml:5: backoff_reset: only with restart_backoff"),
        (
            "restart_delay: 1m\nrestart_backoff: true\nmax_restart_delay: 30s\n",
            "w.yaml:7: max_restart_delay: must be at least restart_delay (1m0s)",
        ),
        ("flap_window: 5m\n", "w.yaml:5: flap_window: only with flap_threshold"),
    ],
)
def test_bad_policy_keys_are_reported_at_their_line(text: str, problem: str) -> None:
    found = problems_of(text)
    assert len(found) == 1, found
    assert found[0].startswith(problem), found


# -- statuses.json ---------------------------------------------------------------------------------


def full_status() -> WorkloadStatus:
    s = WorkloadStatus(workload="web", state=State.GAVE_UP, restart_count=7)
    s.consecutive_successes = 2
    s.starting_until = T0 + timedelta(seconds=90)
    s.current_restart_delay = 40.0
    s.restart_count_at_reset = 4
    s.recent_restarts = (T0, T0 + timedelta(seconds=30))
    s.checks_stopped = True
    s.restart_held = "dependency db unhealthy"
    s.flapping = True
    s.flapping_since = T0
    s.verdict_changes = (T0, T0 + timedelta(seconds=5), T0 + timedelta(seconds=9))
    return s


def test_policy_fields_round_trip_through_statuses_json() -> None:
    status = full_status()
    entry = to_json(status)
    assert entry["recent_restarts"] == ["2026-11-28T03:02:47Z", "2026-11-28T03:03:17Z"]
    assert (entry["restart_count"], entry["restart_count_at_reset"]) == (7, 4)
    assert entry["current_restart_delay_seconds"] == 40.0
    assert entry["restart_held"] == "dependency db unhealthy"
    assert decode(encode([status]))["web"] == status


def test_quiet_policy_fields_are_not_written() -> None:
    entry = to_json(WorkloadStatus(workload="web", total_checks=3))
    assert not set(entry) & {
        "consecutive_successes",
        "starting_until",
        "current_restart_delay_seconds",
        "restart_count_at_reset",
        "recent_restarts",
        "checks_stopped",
        "restart_held",
        "flapping",
        "flapping_since",
        "verdict_changes",
    }


def test_a_file_without_policy_fields_loads_with_their_defaults() -> None:
    old = {"workload": "web", "healthy": False, "restart_count": 3, "state": "gave_up"}
    status = from_json(old)
    assert status is not None
    assert (status.restart_count, status.restart_count_at_reset) == (3, 0)
    assert (status.recent_restarts, status.verdict_changes, status.flapping) == ((), (), False)


def test_bad_policy_fields_keep_their_defaults() -> None:
    entry = {
        "workload": "web",
        "consecutive_successes": -1,
        "restart_count_at_reset": "4",
        "current_restart_delay_seconds": True,
        "recent_restarts": "2026-11-28T03:02:47Z",
        "verdict_changes": ["2026-11-28T03:02:47Z", "yesterday", 5],
        "flapping": "yes",
        "flapping_since": "2026-11-28T03:02:47Z",
        "checks_stopped": 1,
        "restart_held": ["db"],
    }
    status = from_json(json.loads(json.dumps(entry)))
    assert status is not None
    assert (status.consecutive_successes, status.restart_count_at_reset) == (0, 0)
    assert (status.current_restart_delay, status.recent_restarts) == (None, ())
    assert status.verdict_changes == (T0,)
    assert (status.flapping, status.flapping_since, status.checks_stopped) == (False, None, False)
    assert status.restart_held == ""


def test_saved_time_lists_are_bounded() -> None:
    many = [(T0 + timedelta(seconds=n)).isoformat() for n in range(5000)]
    status = from_json({"workload": "web", "recent_restarts": many})
    assert status is not None
    assert len(status.recent_restarts) == 1000
    assert status.recent_restarts[-1] == T0 + timedelta(seconds=4999)


# -- depends_on across workloads ----------------------------------------------------------------


def test_a_chain_has_no_cycle_and_names_not_configured_are_reported() -> None:
    report = review({"app": ["db", "ghost"], "db": ["disk"], "disk": []})
    assert (report.cycles, report.cyclic) == ([], {})
    assert report.missing == {"app": ["ghost"]}


def test_dependencies_closing_a_cycle_are_found_and_others_kept() -> None:
    graph = {
        "a": ["b", "db"],
        "b": ["c"],
        "c": ["a"],
        "x": ["y"],
        "y": ["x"],
        "db": [],
        "app": ["a"],
    }
    report = review(graph)
    assert report.cycles == [["a", "b", "c"], ["x", "y"]]
    assert report.cyclic == {
        "a": frozenset({"b"}),  # a -> db still holds
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "x": frozenset({"y"}),
        "y": frozenset({"x"}),
    }


def test_a_long_chain_and_a_long_cycle_need_no_recursion() -> None:
    n = 20_000
    chain = {f"w{i}": [f"w{i + 1}"] if i + 1 < n else [] for i in range(n)}
    assert review(chain).cycles == []
    chain[f"w{n - 1}"] = ["w0"]
    report = review(chain)
    assert len(report.cycles) == 1
    assert len(report.cycles[0]) == n
    assert len(report.cyclic) == n
