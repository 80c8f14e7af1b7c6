"""``python -m bench`` end to end at a tiny scale, with the installed healthd and real processes.

No assertion on speed: the numbers only have to be there and make sense.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT

HEALTHD = (
    f"{shlex.quote(sys.executable)} -m healthd run "
    "--config-dir {config} --status-dir {status} --log-format json --listen 127.0.0.1:0"
)
SMALL = ["--interval", "500ms", "--timeout", "1s", "--retries", "2", "--target", "builtin"]


def bench(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """The bench as a child, its temporary directories under ``tmp_path``."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "--healthd", HEALTHD, *SMALL, *args],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(tmp_path: Path, *args: str) -> tuple[str, str]:
    """(stdout, stderr) of a bench run to its end, which must succeed."""
    proc = bench(tmp_path, *args)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    return out, err


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text`` (our paths are unique)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(cmdline)
    return found


def test_http_and_exec_report_sane_numbers(tmp_path: Path) -> None:
    out, err = finished(
        tmp_path, "--kind", "http,exec", "--n", "50", "--warmup", "2", "--window", "2", "--json"
    )
    report: dict[str, Any] = json.loads(out)
    results = {r["kind"]: r for r in report["results"]}
    assert list(results) == ["http", "exec"]
    assert results["http"]["target"] == "builtin"
    assert results["exec"]["target"] == "file"
    for kind, r in results.items():
        assert r["n"] == 50, kind
        assert r["expected_per_s"] == 100.0, kind
        assert r["checks_in_window"] > 0, kind
        assert r["achieved_per_s"] > 0, kind
        assert r["keep_up_pct"] > 0, kind
        assert r["cpu_ms_per_check"] > 0, kind
        assert r["children_cpu_ms_per_check"] >= 0, kind
        assert r["peak_rss_mb"] > 0, kind
        assert r["detection_bound_s"] == 2.1, kind  # 500ms * 2 + 1s + 0.1s
        detection = r["detection_s"]
        assert sorted(detection) == ["sentinel0", "sentinel1", "sentinel2"], kind
        assert all(v is not None and v > 0 for v in detection.values()), (kind, r["notes"])
        assert r["detection_max_s"] == max(detection.values()), kind
        assert isinstance(r["false_check_fails"], int), kind
        for lag in (r["lag_p50_ms"], r["lag_p99_ms"]):  # n/a until healthd writes daemon.json
            assert lag is None or lag >= 0, kind
    http, exec_ = results["http"], results["exec"]
    # a new connection per check by default, each reset by healthd: nothing in TIME-WAIT
    assert 0.9 <= http["connections_per_s"] / http["achieved_per_s"] <= 1.1
    assert report["options"]["keep_alive"] is False
    tw = http["time_wait"]
    assert tw["samples"] >= 3  # the window's start and end, and once a second between
    assert tw["sample_ms"] > 0
    for figures in (tw["peak"], tw["end"]):
        assert figures["host"] >= figures["client"] + figures["server"] >= 0
    assert tw["end"]["client"] <= tw["peak"]["client"]
    assert exec_["connections_per_s"] is None
    assert exec_["time_wait"] is None
    host_tcp = report["host_tcp"]
    assert (
        host_tcp["local_ports"]
        == host_tcp["local_port_range"][1] - host_tcp["local_port_range"][0] + 1
    )
    assert f"tcp_max_tw_buckets {host_tcp['max_tw_buckets']}" in report["environment"]
    # the table went to stderr, with a row per kind
    assert "KEEP-UP" in err
    assert "TW PEAK cli" in err
    assert "http: TIME-WAIT at the end of the window: checker " in err
    assert any(line.startswith("exec ") for line in err.splitlines())
    # nothing left behind: no process, no temporary directory
    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.needs("openssl")
@pytest.mark.parametrize("target", ["builtin", "nginx"])
def test_https_checks_verify_and_count_handshakes(
    require_binary: Callable[[str], str], tmp_path: Path, target: str
) -> None:
    require_binary("openssl")
    if target == "nginx":
        require_binary("nginx")
    out, err = finished(
        tmp_path, "--kind", "https", "--target", target, "--n", "20", "--warmup", "2",
        "--window", "2", "--json",
    )  # fmt: skip
    (r,) = json.loads(out)["results"]
    assert (r["kind"], r["target"]) == ("https", target)
    # requests arrive only after a handshake the checks verified against the bench's CA
    assert r["checks_in_window"] > 0
    assert r["connections_per_s"] > 0
    tls = r["tls"]
    assert tls["handshakes"] >= r["checks_in_window"]
    assert 0 <= tls["resumed"] <= tls["handshakes"]
    assert sum(tls["versions"].values()) == tls["handshakes"]
    assert all(v is not None for v in r["detection_s"].values()), r["notes"]  # TLS sentinels
    assert f"https: TLS handshakes at the target over the run: {tls['handshakes']}," in err
    assert list(tmp_path.iterdir()) == []


def test_keep_alive_keeps_connections(tmp_path: Path) -> None:
    out, err = finished(
        tmp_path, "--kind", "http", "--keep-alive", "--n", "20", "--warmup", "2", "--window", "2",
        "--json",
    )  # fmt: skip
    report = json.loads(out)
    assert report["options"]["keep_alive"] is True
    (header,) = [line for line in err.splitlines() if line.startswith("healthd bench: ")]
    assert " keep_alive=true " in header
    (r,) = report["results"]
    assert r["checks_in_window"] > 0
    # the connections were opened in the warm-up, and kept: few or none are new
    assert r["connections_per_s"] < 0.2 * r["achieved_per_s"]
    assert all(v is not None for v in r["detection_s"].values()), r["notes"]


@pytest.mark.parametrize("kind", ["tcp", "exec"])
def test_keep_alive_is_refused_for_kinds_without_a_connection(tmp_path: Path, kind: str) -> None:
    proc = bench(tmp_path, "--kind", f"http,{kind}", "--keep-alive")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out == ""
    assert f"bench: --keep-alive: {kind} checks keep no connection" in err
    assert list(tmp_path.iterdir()) == []  # nothing started


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    proc = bench(tmp_path, "--kind", "http", "--n", "5", "--warmup", "30", "--window", "30")
    try:
        deadline = time.monotonic() + 30
        logs: list[Path] = []
        while not any("daemon_started" in p.read_text() for p in logs):
            assert time.monotonic() < deadline, "healthd did not start"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
            logs = list(tmp_path.glob("*/daemon.log"))
        assert processes_mentioning(str(tmp_path))  # healthd and the targets run
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "interrupted by SIGINT" in err
    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []
