"""StatusEncoder: statuses.json re-encoding only what changed, always equal to a full encode."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from healthd.model import State, WorkloadStatus
from healthd.store.status import StatusEncoder, decode, encode

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def status(name: str, checks: int = 0) -> WorkloadStatus:
    s = WorkloadStatus(workload=name, total_checks=checks)
    if checks:
        s.last_check = T0 + timedelta(seconds=checks)
        s.healthy = True
        s.state = State.HEALTHY
        s.last_check_duration = 0.25
    return s


def statuses(*names: str) -> dict[str, WorkloadStatus]:
    return {name: status(name, i) for i, name in enumerate(names)}


def fresh(current: dict[str, WorkloadStatus]) -> bytes:
    return StatusEncoder().encode(current)


def fail(s: WorkloadStatus, error: str) -> None:
    s.healthy = False
    s.state = State.UNHEALTHY
    s.total_checks += 1
    s.total_fails += 1
    s.consecutive_fails += 1
    s.last_error = error
    # Counts drawn by hypothesis reach 2**40: as minutes that is past year 9999.
    s.last_check = T0 + timedelta(minutes=s.total_checks % 1_000_000)


def test_empty_is_an_empty_json_list() -> None:
    data = StatusEncoder().encode({})
    assert data == b"[]\n"
    assert json.loads(data) == []
    assert encode([]) == b"[]\n"


def test_incremental_encode_equals_a_full_encode_after_changes() -> None:
    current = statuses("web", "db", "cache", "queue", "auth")
    encoder = StatusEncoder()
    assert encoder.encode(current) == fresh(current)
    fail(current["db"], "TCP check failed: 10.0.0.5:5432: connection refused")
    current["queue"].restart_count = 2
    current["queue"].last_restart = T0
    second = encoder.encode(current, ["db", "queue"])
    assert second == fresh(current)
    assert second == encode(current.values())
    by_name = {e["workload"]: e for e in json.loads(second)}
    assert by_name["db"]["last_error"].endswith("connection refused")
    assert by_name["queue"]["restart_count"] == 2


def test_nothing_changed_gives_the_same_bytes() -> None:
    current = statuses("a", "b")
    encoder = StatusEncoder()
    first = encoder.encode(current)
    assert encoder.encode(current, []) == first
    assert encoder.encode(current, set()) == first


def test_unchanged_entries_are_reused_as_encoded() -> None:
    """Only ``changed`` entries are re-encoded: the caller's list is what is trusted."""
    current = statuses("a", "b")
    encoder = StatusEncoder()
    first = encoder.encode(current)
    current["b"].total_checks = 99  # not reported as changed
    assert encoder.encode(current, []) == first
    assert encoder.encode(current, ["b"]) == fresh(current)  # reported: picked up


def test_changed_may_name_a_workload_that_is_not_there() -> None:
    current = statuses("a", "b")
    encoder = StatusEncoder()
    encoder.encode(current)
    assert encoder.encode(current, ["gone", "b"]) == fresh(current)


def test_workloads_added_between_calls_appear_in_order() -> None:
    current = statuses("m", "x")
    encoder = StatusEncoder()
    encoder.encode(current)
    current["a"] = status("a", 3)
    current["n"] = status("n", 4)
    data = encoder.encode(current, [])  # new entries are encoded even if not named
    assert data == fresh(current)
    assert [e["workload"] for e in json.loads(data)] == ["a", "m", "n", "x"]


def test_workloads_removed_between_calls_disappear() -> None:
    current = statuses("a", "b", "c")
    encoder = StatusEncoder()
    encoder.encode(current)
    del current["b"]
    data = encoder.encode(current, [])
    assert data == fresh(current)
    assert [e["workload"] for e in json.loads(data)] == ["a", "c"]
    del current["a"], current["c"]
    assert encoder.encode(current, []) == b"[]\n"


def test_same_number_of_workloads_but_different_ones() -> None:
    current = statuses("a", "b", "c")
    encoder = StatusEncoder()
    encoder.encode(current)
    del current["b"]
    current["d"] = status("d", 7)
    assert encoder.encode(current, ["a"]) == fresh(current)


def test_a_removed_workload_that_comes_back_is_encoded_as_it_is_now() -> None:
    current = statuses("a", "b")
    encoder = StatusEncoder()
    encoder.encode(current)
    old_b = current.pop("b")
    encoder.encode(current, [])
    current["b"] = WorkloadStatus(workload="b", total_checks=old_b.total_checks + 40)
    data = encoder.encode(current, [])
    assert data == fresh(current)
    assert json.loads(data)[1]["total_checks"] == old_b.total_checks + 40


def test_first_call_with_changed_still_encodes_everything() -> None:
    current = statuses("a", "b", "c")
    assert StatusEncoder().encode(current, ["b"]) == encode(current.values())


def test_one_entry_per_line_sorted_by_workload() -> None:
    current = statuses("zeta", "Alpha", "beta", "a.b", "a-b", "a_b", "9")
    current["beta"].last_error = "line one\nline two\ttab, naïve ünïcode ✓"
    data = StatusEncoder().encode(current)
    entries = json.loads(data)
    names = [e["workload"] for e in entries]
    assert names == sorted(current)
    lines = data.decode("utf-8").splitlines()
    assert lines[0] == "["
    assert lines[-1] == "]"
    assert len(lines) == len(current) + 2
    for line, name in zip(lines[1:-1], names, strict=True):
        assert json.loads(line.removesuffix(","))["workload"] == name
    assert "naïve ünïcode ✓" in data.decode("utf-8")  # UTF-8, not \u escapes


def test_a_paused_state_written_by_hand_reads_as_paused_over_a_derived_state() -> None:
    [entry] = json.loads(encode([WorkloadStatus("web", healthy=True, total_checks=3)]))
    entry["state"] = "paused"
    s = decode(json.dumps([entry]).encode())["web"]
    assert (s.paused, s.state, s.shown_state) == (True, State.HEALTHY, State.PAUSED)


def test_decode_of_encode_round_trips() -> None:
    current = statuses("web", "db")
    fail(current["db"], "HTTP 503 from http://10.0.0.5:8080/healthz: maintenance")
    s = current["web"]
    s.restart_count, s.restart_failures = 3, 1
    s.last_restart = T0 - timedelta(hours=1)
    s.last_restart_attempt = T0 - timedelta(minutes=5)
    s.last_restart_error = "false: exit status 1"
    s.address, s.address_source = "10.0.0.9", "machinectl"
    encoder = StatusEncoder()
    encoder.encode(current)
    s.total_checks += 1
    assert decode(encoder.encode(current, ["web"])) == current


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,20}", fullmatch=True)
times = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
counts = st.integers(min_value=0, max_value=2**40)


@st.composite
def workload_statuses(draw: st.DrawFn, name: str) -> WorkloadStatus:
    s = WorkloadStatus(workload=name)
    s.healthy = draw(st.booleans())
    s.last_check, s.last_healthy = draw(times), draw(times)
    s.last_restart, s.last_restart_attempt = draw(times), draw(times)
    s.consecutive_fails, s.total_checks, s.total_fails = draw(counts), draw(counts), draw(counts)
    s.restart_count, s.restart_failures = draw(counts), draw(counts)
    s.last_error, s.last_restart_error = draw(st.text()), draw(st.text())
    s.address, s.address_source = draw(st.text()), draw(st.text())
    s.state = draw(st.sampled_from([state for state in State if state is not State.PAUSED]))
    if draw(st.booleans()):  # paused is kept beside the machine's state, not in it
        s.paused, s.paused_at, s.paused_reason = True, draw(times), draw(st.text())
    micros = draw(st.none() | st.integers(min_value=0, max_value=10**9))
    s.last_check_duration = None if micros is None else micros / 1e6
    return s


@st.composite
def status_maps(draw: st.DrawFn) -> dict[str, WorkloadStatus]:
    chosen = draw(st.sets(names, max_size=6))
    return {name: draw(workload_statuses(name)) for name in chosen}


@given(status_maps())
def test_decode_of_encode_round_trips_any_status(current: dict[str, WorkloadStatus]) -> None:
    data = StatusEncoder().encode(current)
    assert decode(data) == current
    assert [e["workload"] for e in json.loads(data)] == sorted(current)


@given(status_maps(), st.lists(st.tuples(st.sampled_from(["add", "drop", "change"]), names)))
def test_incremental_encode_always_equals_a_fresh_one(
    current: dict[str, WorkloadStatus], steps: list[tuple[str, str]]
) -> None:
    encoder = StatusEncoder()
    encoder.encode(current)
    for i, (action, name) in enumerate(steps):
        changed: list[str] = []
        if action == "add":
            if name in current:
                changed.append(name)  # a new status object for it: a change like any other
            current[name] = status(name, i + 1)
        elif action == "drop":
            current.pop(name, None)
        elif name in current:
            fail(current[name], f"failure {i}")
            changed.append(name)
        assert encoder.encode(current, changed) == fresh(current)
