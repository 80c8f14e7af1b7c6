"""GET /metrics of the real daemon, proven with Prometheus' own tools: promtool lints the
exposition, prometheus_client's parsers read it back, and a real Prometheus server on loopback
scrapes it and sees a workload go down."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from healthd import __version__

from .harness import ApiClient, DaemonProc, Service, Services, free_port, wait_for, write

STATES = (
    "starting",
    "healthy",
    "unhealthy",
    "restarting",
    "gave_up",
    "disabled",
    "config_error",
    "paused",
)
BROKEN_FILES = 2
MANUAL_CHECKS = 3  # POST .../db/check calls on top of db's one scheduled check


def get(url: str, accept: str | None = None) -> tuple[str, str]:
    """(content type, body) of a GET that must answer 200."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return response.headers["Content-Type"], response.read().decode()


def get_json(url: str) -> Any:
    return json.loads(get(url)[1])


@dataclass
class Fleet:
    """A running daemon with one workload in each interesting state."""

    daemon: DaemonProc
    url: str
    web: Service  # http, healthy
    maint: Service  # tcp, healthy but paused (maintenance)
    # db: tcp to a closed port, unhealthy; off: disabled; two broken files


def start_fleet(daemon: DaemonProc, services: Services, tmp_path: Path) -> Fleet:
    web = services.start("http")
    maint = services.start("tcp")
    write(daemon, "web", "http", port=web.port, host="127.0.0.1", retries=1)
    # One scheduled check (at start), then only the checks the test asks for: its counters
    # hold still while the test compares them.
    write(daemon, "db", "tcp", port=free_port(), host="127.0.0.1", retries=1, interval=3600)
    write(daemon, "off", "tcp", port=free_port(), host="127.0.0.1", enabled=False)
    write(daemon, "maint", "tcp", port=maint.port, host="127.0.0.1", retries=1)
    for n in range(BROKEN_FILES):
        (daemon.config_dir / f"broken{n}.yaml").write_text(f"workload: broken{n}\ntype: tcp\n")
    sock = tmp_path / "api.sock"
    daemon.daemon_config.write_text(f"api:\n  socket: {sock}\n")
    daemon.start()
    url = daemon.api_url()
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    daemon.wait_status("maint", lambda s: s["state"] == "healthy")
    daemon.wait_status("db", lambda s: s["state"] == "unhealthy")
    # As root (or the daemon's own user) on the Unix socket: no token needed.
    unix = ApiClient(sock)
    paused = unix.post("/v1/workloads/maint/pause", {"reason": "metrics test"})
    assert paused["state"] == "paused"
    for _ in range(MANUAL_CHECKS):
        assert unix.post("/v1/workloads/db/check")["ok"] is False
    return Fleet(daemon, url, web, maint)


def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def by_workload(family: Metric, sample_name: str | None = None) -> dict[str, float]:
    name = sample_name or family.name
    return {s.labels["workload"]: s.value for s in family.samples if s.name == name}


def test_metrics_output_passes_promtool_lint(
    daemon: DaemonProc, services: Services, tmp_path: Path, require_binary: Callable[[str], str]
) -> None:
    promtool = require_binary("promtool")
    fleet = start_fleet(daemon, services, tmp_path)
    content_type, body = get(fleet.url + "/metrics")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'healthd_workload_state{state="paused",workload="maint"} 1.0' in body  # the real thing
    lint = subprocess.run(
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (lint.returncode, lint.stderr) == (0, ""), f"{lint.stdout}{lint.stderr}\n{body}"


def test_metrics_values_match_the_daemons_state(
    daemon: DaemonProc, services: Services, tmp_path: Path
) -> None:
    fleet = start_fleet(daemon, services, tmp_path)
    status = {w["workload"]: w for w in get_json(fleet.url + "/v1/status")["workloads"]}
    scraped_at = time.time()
    fams = families(get(fleet.url + "/metrics")[1])
    names = {"web", "db", "off", "maint"}
    assert set(status) == names

    assert by_workload(fams["healthd_workload_up"]) == {
        "web": 1.0,
        "db": 0.0,
        "off": 0.0,
        "maint": 1.0,  # paused for maintenance, and its checks still find it healthy
    }

    state = fams["healthd_workload_state"]
    for name in names:
        mine = {s.labels["state"]: s.value for s in state.samples if s.labels["workload"] == name}
        assert set(mine) == set(STATES), name
        assert sorted(mine.values()) == [0.0] * (len(STATES) - 1) + [1.0], (name, mine)
        assert mine[status[name]["state"]] == 1.0, (name, mine)
    assert {name: status[name]["state"] for name in names} == {
        "web": "healthy",
        "db": "unhealthy",
        "off": "disabled",
        "maint": "paused",
    }

    checks = fams["healthd_checks"]
    for name in ("db", "off"):  # web and maint are checked every 0.2 s; these hold still
        mine = {
            s.labels["result"]: s.value
            for s in checks.samples
            if s.name == "healthd_checks_total" and s.labels["workload"] == name
        }
        total, fails = status[name]["total_checks"], status[name]["total_fails"]
        assert mine == {"success": total - fails, "failure": fails}, name
    assert status["db"]["total_fails"] == 1 + MANUAL_CHECKS
    web_types = {s.labels["type"] for s in checks.samples if s.labels["workload"] == "web"}
    assert web_types == {"http"}

    durations = fams["healthd_check_duration_seconds"]
    counts = by_workload(durations, "healthd_check_duration_seconds_count")
    assert counts["db"] == status["db"]["total_checks"] == 1 + MANUAL_CHECKS
    assert counts["web"] > 0
    assert "off" not in counts  # never checked: no histogram at all
    inf = {
        s.labels["workload"]: s.value
        for s in durations.samples
        if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
    }
    assert inf["db"] == counts["db"]
    assert by_workload(durations, "healthd_check_duration_seconds_sum")["db"] > 0

    consecutive = by_workload(fams["healthd_consecutive_failures"])
    assert consecutive == {"web": 0.0, "db": 1.0 + MANUAL_CHECKS, "off": 0.0, "maint": 0.0}

    last = by_workload(fams["healthd_last_check_timestamp_seconds"])
    assert set(last) == {"web", "db", "maint"}  # never checked: no timestamp
    assert abs(last["web"] - scraped_at) < 5
    assert abs(last["db"] - scraped_at) < 30

    restarts = fams["healthd_restarts"]
    assert {(s.labels["workload"], s.labels["outcome"]) for s in restarts.samples} == {
        (name, outcome) for name in names for outcome in ("success", "failure")
    }
    assert {s.value for s in restarts.samples} == {0.0}  # nothing restarts here

    lag = fams["healthd_scheduler_lag_seconds"]
    assert only(lag, "_count") > 0
    inf_lag = [s.value for s in lag.samples if s.labels.get("le") == "+Inf"]
    assert inf_lag == [only(lag, "_count")]
    assert only(fams["healthd_scheduler_behind"]) in (0.0, 1.0)
    assert only(fams["healthd_config_errors"]) == BROKEN_FILES
    assert len(get_json(fleet.url + "/v1/workloads")["config_errors"]) == BROKEN_FILES
    (build,) = fams["healthd_build_info"].samples  # the text format knows no "info" type
    assert build.labels == {"version": __version__}
    assert only(fams["process_resident_memory_bytes"]) > 0
    assert only(fams["process_open_fds"]) > 0
    assert abs(only(fams["process_start_time_seconds"]) - scraped_at) < 120


def only(family: Metric, suffix: str = "") -> float:
    """The value of the family's one sample named ``family.name + suffix``."""
    (value,) = [s.value for s in family.samples if s.name == family.name + suffix]
    return value


def test_openmetrics_is_served_when_asked_for(
    daemon: DaemonProc, services: Services, tmp_path: Path
) -> None:
    fleet = start_fleet(daemon, services, tmp_path)
    content_type, body = get(
        fleet.url + "/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")
    # The strict OpenMetrics parser (raises on bad syntax, a missing EOF included).
    parsed = {f.name: f for f in openmetrics_families(body)}  # type: ignore[no-untyped-call]
    up = {s.labels["workload"]: s.value for s in parsed["healthd_workload_up"].samples}
    assert up == {"web": 1.0, "db": 0.0, "off": 0.0, "maint": 1.0}
    # Without the Accept header: the classic text format, no EOF marker.
    plain_type, plain = get(fleet.url + "/metrics")
    assert plain_type.startswith("text/plain")
    assert "# EOF" not in plain


# -- a real Prometheus server --------------------------------------------------------------------


@pytest.fixture
def prometheus_server(
    tmp_path: Path, env: dict[str, str], require_binary: Callable[[str], str]
) -> Iterator[Callable[[str], str]]:
    """Start Prometheus (own process group, loopback only) scraping a target every second;
    returns its base URL. Always stopped at teardown."""
    binary = require_binary("prometheus")
    started: list[subprocess.Popen[bytes]] = []
    log_path = tmp_path / "prometheus.log"

    def start(target: str) -> str:
        directory = tmp_path / "prometheus"
        directory.mkdir()
        (directory / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: healthd\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        port = free_port()
        with open(log_path, "ab") as log:
            started.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={directory / 'prometheus.yml'}",
                        f"--storage.tsdb.path={directory / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def query(base: str, promql: str) -> dict[str, float] | None:
    """workload -> value of an instant query; None while Prometheus is not answering yet."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.loads(response.read())
    except OSError:
        return None
    assert answer["status"] == "success", answer
    return {r["metric"].get("workload", ""): float(r["value"][1]) for r in answer["data"]["result"]}


def test_prometheus_scrapes_the_daemon_and_sees_a_workload_go_down(
    daemon: DaemonProc,
    services: Services,
    tmp_path: Path,
    prometheus_server: Callable[[str], str],
) -> None:
    fleet = start_fleet(daemon, services, tmp_path)
    prom = prometheus_server(fleet.url.removeprefix("http://"))
    names = {"web", "db", "off", "maint"}

    def log() -> str:
        log_file = tmp_path / "prometheus.log"
        return log_file.read_text()[-4000:] if log_file.exists() else ""

    def seen_up() -> dict[str, float] | None:
        values = query(prom, 'healthd_workload_up{job="healthd"}')
        return values if values is not None and set(values) == names else None

    first = wait_for("Prometheus to scrape healthd", seen_up, timeout=30, detail=log)
    assert first == {"web": 1.0, "db": 0.0, "off": 0.0, "maint": 1.0}
    assert query(prom, 'up{job="healthd"}') == {"": 1.0}  # the scrape itself succeeded
    state = query(prom, 'healthd_workload_state{job="healthd"} == 1')
    assert state is not None
    assert state.keys() == names

    fleet.web.kill()  # for real: its process group gets SIGKILL

    def web_down() -> bool:
        values = query(prom, 'healthd_workload_up{job="healthd",workload="web"}')
        return values == {"web": 0.0}

    wait_for("Prometheus to see web down", web_down, timeout=30, detail=log)
    failing = query(prom, 'healthd_checks_total{job="healthd",workload="web",result="failure"}')
    assert failing is not None
    assert failing["web"] > 0
    assert daemon.terminate() == 0
