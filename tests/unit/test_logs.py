"""The structured logger: logfmt quoting, JSON lines, bound fields and level filtering."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from healthd.logs import make_logger, render_logfmt


def test_logfmt_line_starts_with_ts_level_event_then_fields_in_order() -> None:
    out = io.StringIO()
    make_logger(out).info("daemon_started", workloads=3, config_dir="/etc/volt/health")
    line = out.getvalue()
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert re.fullmatch(
        r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z level=info event=daemon_started "
        r"workloads=3 config_dir=/etc/volt/health\n",
        line,
    )


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),  # quoted, so the escape is unambiguous
        ("back\\slash and space", '"back\\\\slash and space"'),
        ("line\nbreak", '"line\\nbreak"'),  # one event is always one line
        ("carriage\rreturn\ttab", '"carriage\\rreturn\\ttab"'),
        ("nul\x00 nel\x85 ls\u2028", '"nul\\x00 nel\\x85 ls\\u2028"'),  # all break lines
        (True, "true"),
        (False, "false"),
        (None, ""),
        (1.5, "1.5"),
    ],
)
def test_logfmt_values(value: object, rendered: str) -> None:
    assert render_logfmt({"k": value}) == f"k={rendered}"


def test_logfmt_rejects_keys_with_spaces() -> None:
    with pytest.raises(ValueError, match="invalid log key"):
        render_logfmt({"bad key": 1})


def test_json_lines_carry_the_same_fields() -> None:
    out = io.StringIO()
    log = make_logger(out, fmt="json").bind(workload="web")
    log.error("unhealthy", message='failed "3" times', state="healthy->unhealthy")
    log.warning("check_fail", consecutive_fails=2)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "unhealthy"
    assert first["level"] == "error"
    assert first["workload"] == "web"
    assert first["message"] == 'failed "3" times'
    assert first["ts"].endswith("Z")
    assert second["consecutive_fails"] == 2


def test_bind_adds_fields_without_changing_the_parent() -> None:
    out = io.StringIO()
    parent = make_logger(out)
    parent.bind(workload="db").info("restart_done")
    parent.info("daemon_stopped")
    first, second = out.getvalue().splitlines()
    assert "workload=db" in first
    assert "workload" not in second


def test_levels_below_the_threshold_are_dropped() -> None:
    out = io.StringIO()
    log = make_logger(out, level=logging.WARNING)
    log.debug("noise")
    log.info("noise")
    log.warning("kept")
    assert [line.split()[2] for line in out.getvalue().splitlines()] == ["event=kept"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        make_logger(fmt="xml")
