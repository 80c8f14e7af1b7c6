"""``python -m bench --flood``: the real daemon, a real flood, tiny; the report, not timings.

Also the flood client on its own, against a real daemon's API, and the helpers that turn two
daemon.json snapshots into a window's lag.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.errors import BenchError
from bench.flood import CLIENT_SCRIPT, LATE, api_port, highest_bucket, lag_window

from healthd.engine.lag import BOUNDS

from .test_run import finished, processes_mentioning


def snapshot(cumulative: dict[float, int]) -> dict[str, Any]:
    """A daemon.json whose lag histogram has these cumulative counts (carried up to +Inf)."""
    buckets: list[list[Any]] = []
    count = 0
    for bound in BOUNDS:
        count = cumulative.get(bound, count)
        buckets.append([bound, count])
    buckets.append(["+Inf", count])
    return {"scheduler": {"lag_seconds_buckets": buckets}}


def test_flood_reports_lag_without_and_with_the_flood(tmp_path: Path) -> None:
    out, err = finished(
        tmp_path, "--kind", "tcp", "--n", "20", "--warmup", "1", "--window", "1",
        "--flood", "4", "--flood-depth", "4", "--json",
    )  # fmt: skip
    report: dict[str, Any] = json.loads(out)
    assert report["options"]["flood"] == 4
    assert report["options"]["flood_depth"] == 4
    assert report["options"]["flood_path"] == "/v1/status"
    (r,) = report["results"]
    flood = r["flood"]
    assert (flood["connections"], flood["depth"], flood["path"]) == (4, 4, "/v1/status")
    for name in ("quiet", "flooded"):
        w = flood[name]
        # each window runs from one daemon.json to another: at least the window asked for
        assert w["seconds"] >= 1.0, name
        assert w["checks"] > 0, name
        assert 0 <= w["p50_ms"] <= w["p99_ms"], name
        assert w["max_ms"] is not None, name
        assert w["max_ms"] >= w["p99_ms"], name
        assert 0 <= w["late_checks"] <= w["checks"], name
        assert w["behind_lines"] >= 0, name
        assert w["cpu_cores"] > 0, name
    assert flood["p99_ratio"] == flood["flooded"]["p99_ms"] / flood["quiet"]["p99_ms"]
    # the flood was answered: whole statuses, and refusals of what went over the budget
    assert flood["answers"].get("200", 0) > 0, flood
    assert set(flood["answers"]) <= {"200", "429"}, flood
    assert flood["answers_per_s"] > 0
    assert flood["bytes_per_s"] > 0
    assert flood["client_errors"] == 0
    # the sentinels are still detected after the flood, and nothing failed meanwhile
    assert all(v is not None for v in r["detection_s"].values()), r["notes"]
    assert r["false_check_fails"] == 0
    (header,) = [line for line in err.splitlines() if line.startswith("healthd bench: ")]
    assert " flood=4x4 GET /v1/status " in header
    assert "tcp: lag, quiet:   p50 " in err
    assert "tcp: lag, flooded: p50 " in err
    assert "tcp: flood: 4 connections x 4 pipelined GET /v1/status; p99 flooded/quiet " in err
    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []


def test_a_bad_flood_path_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--flood", "2", "--flood-path", "v1/status"],
        cwd=CLIENT_SCRIPT.parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "bench: --flood-path 'v1/status': a path such as /v1/status" in proc.stderr


def test_a_window_counts_late_checks_and_the_highest_bucket() -> None:
    start = snapshot({0.001: 10, 1.0: 10, 2.5: 10})
    end = snapshot({0.001: 110, 0.005: 150, 1.0: 160, 2.5: 163})
    w = lag_window(start, end, seconds=10.0, cpu=2.0, behind=1)
    assert w.checks == 153
    assert w.late_checks == 3  # 160 - 10 within LATE, 163 - 10 in all
    assert LATE == 1.0
    assert w.max_ms == 2500.0
    assert w.cpu_cores == 0.2
    assert w.behind_lines == 1
    assert w.p50_ms is not None
    assert w.p50_ms <= 1.0


def test_highest_bucket_beyond_the_last_bound_is_unknown() -> None:
    assert highest_bucket([(1.0, 5.0), (float("inf"), 5.0)]) == 1.0
    assert highest_bucket([(1.0, 5.0), (float("inf"), 6.0)]) is None
    assert highest_bucket([(1.0, 0.0), (float("inf"), 0.0)]) == 0.0


def test_the_api_port_comes_from_daemon_json() -> None:
    assert api_port({"api": {"listen": "127.0.0.1:9780"}}) == 9780
    with pytest.raises(BenchError, match="names no TCP API address"):
        api_port({"api": {"socket": "/run/healthd/api.sock"}})
    with pytest.raises(BenchError, match=r"not on 127\.0\.0\.1"):
        api_port({"api": {"listen": "10.0.0.1:9780"}})
