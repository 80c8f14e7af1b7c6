"""bench.logscan: healthd's JSON log lines, read while written, tallied."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.logscan import EventTally, LogEvent, LogFollower, parse_line


def line(**fields: Any) -> str:
    return json.dumps(fields) + "\n"


def test_parse_line() -> None:
    event = parse_line(
        line(
            workload="sentinel0",
            message="health check failed 3 times",
            state="healthy->unhealthy",
            event="unhealthy",
            level="error",
            ts="2026-11-28T04:01:02.123456Z",
        )
    )
    assert event == LogEvent(
        "unhealthy", "sentinel0", datetime(2026, 11, 28, 4, 1, 2, 123456, tzinfo=UTC), "error"
    )


def test_parse_line_skips_what_is_not_a_json_event() -> None:
    not_events: list[str | bytes] = ["", "Traceback (most recent call last):", "[1, 2]", "{"]
    for text in [*not_events, '{"no": "event"}', b"\xff"]:
        assert parse_line(text) is None
    assert parse_line(line(event="x", ts="yesterday")) == LogEvent("x", None, None, None)


def test_follower_reads_appended_lines_and_keeps_a_partial_one(tmp_path: Path) -> None:
    log = tmp_path / "log"
    follower = LogFollower(log)
    assert follower.poll() == []  # no file yet
    first = line(event="daemon_started")
    second = line(event="check_fail", workload="wl00001")
    log.write_text("not json\n" + first + second[:10])
    assert [e.event for e in follower.poll()] == ["daemon_started"]
    with log.open("a") as f:
        f.write(second[10:] + line(event="signal").rstrip("\n"))
    assert [e.event for e in follower.poll()] == ["check_fail"]
    assert [e.event for e in follower.finish()] == ["signal"]
    assert follower.finish() == []


def test_tally() -> None:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    tally = EventTally()
    tally.feed(
        [
            LogEvent("check_fail", "wl00001", ts, "warning"),
            LogEvent("check_fail", "sentinel0", ts, "warning"),
            LogEvent("unhealthy", "sentinel1", ts, "error"),  # before the break: not a detection
            LogEvent("unhealthy", "wl00002", ts, "error"),
        ],
        after_break=False,
    )
    assert (tally.check_fails, tally.unhealthy, tally.sentinel_fails_before_break) == (1, 1, 1)
    assert tally.detected == {}
    later = datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC)
    tally.feed(
        [
            LogEvent("check_fail", "sentinel0", later, "warning"),  # expected after the break
            LogEvent("unhealthy", "sentinel0", later, "error"),
            LogEvent("unhealthy", "sentinel0", ts, "error"),  # only the first one counts
            LogEvent("unhealthy", "sentinel1", later, "error"),
        ],
        after_break=True,
    )
    assert tally.check_fails == 1
    assert tally.detected == {"sentinel0": later, "sentinel1": later}
    assert not tally.all_detected()
    tally.feed([LogEvent("unhealthy", "sentinel2", None, "error")], after_break=True)
    assert tally.all_detected()
