"""``--flood M``: does a flood of the API slow monitoring? Scheduler lag without, then with it.

After the run's window, on the same daemon, the bench measures two more windows of the same
length, back to back:

1. *quiet*: nothing but the checks;
2. *flooded*: ``flood_client.py`` (a child at nice 19, in a session of its own) keeps M
   connections to healthd's API, each with ``--flood-depth`` pipelined ``GET --flood-path``
   outstanding, for the whole window.

Each window starts and ends at a fresh ``daemon.json`` (it is rewritten every 5 s): the lag
histograms of its two snapshots cover exactly the checks started in between, so the quiet and
the flooded window compare like with like. The figures: lag p50 and p99 (interpolated in the
bucket, as Prometheus does), the lag's maximum as the upper bound of its highest non-empty
bucket, the checks that started more than 1 s late, ``scheduler_behind`` lines in the log,
the daemon's CPU, and what the flood got (answers by status, bytes). The goal: the flooded
p99 within twice the quiet one (``p99_ratio`` <= 2).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemon_json import read_daemon_json
from bench.errors import BenchError
from bench.histogram import Bucket, lag_buckets, window_buckets, window_lag
from bench.proc import cpu_sample, spawn, stop_group

CLIENT_SCRIPT = Path(__file__).with_name("flood_client.py")
FRESH_TIMEOUT = 60.0  # daemon.json is rewritten every 5 s; later only when healthd is starved
LATE = 1.0  # seconds: a check that started later than this is counted (scheduler_behind's level)


@dataclass(frozen=True)
class LagWindow:
    """Scheduler lag of the checks started within one window (from daemon.json)."""

    seconds: float
    checks: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None  # upper bound of the highest non-empty bucket; None: beyond the last
    late_checks: int  # started more than LATE late
    behind_lines: int  # scheduler_behind lines the daemon logged during the window
    cpu_cores: float  # the daemon's CPU, in cores


@dataclass(frozen=True)
class FloodResult:
    connections: int
    depth: int
    path: str
    quiet: LagWindow
    flooded: LagWindow
    p99_ratio: float | None  # flooded p99 / quiet p99
    answers: dict[str, int]  # the flood's answers, by status code
    answers_per_s: float
    bytes_per_s: float
    client_errors: int  # the flood's connections that failed or broke


def highest_bucket(delta: list[Bucket]) -> float | None:
    """The upper bound of the highest bucket with observations (0 with none); None when that
    is the +Inf bucket."""
    top, previous = 0.0, 0.0
    for bound, count in delta:
        if count > previous:
            top = bound
        previous = count
    return None if math.isinf(top) else top


def fresh_daemon_json(status_dir: Path, watch: Callable[[], None]) -> dict[str, Any]:
    """The next daemon.json healthd writes from now on (with its lag histogram)."""
    now = read_daemon_json(status_dir)
    seen = now.get("updated_at") if now else None
    deadline = time.monotonic() + FRESH_TIMEOUT
    while True:
        watch()
        data = read_daemon_json(status_dir)
        if data is not None and data.get("updated_at") != seen and lag_buckets(data) is not None:
            return data
        if time.monotonic() > deadline:
            raise BenchError(f"healthd did not rewrite daemon.json within {FRESH_TIMEOUT:g}s")
        time.sleep(0.05)


def lag_window(
    start: Mapping[str, Any], end: Mapping[str, Any], seconds: float, cpu: float, behind: int
) -> LagWindow:
    lag = window_lag(start, end)
    first, last = lag_buckets(start), lag_buckets(end)
    delta = window_buckets(first, last) if first is not None and last is not None else None
    checks = int(delta[-1][1]) if delta else 0
    late = 0
    top = None
    if delta:
        on_time = next((count for bound, count in delta if bound >= LATE), 0.0)
        late = int(delta[-1][1] - on_time)
        top = highest_bucket(delta)
    return LagWindow(
        seconds=seconds,
        checks=checks,
        p50_ms=None if lag.p50 is None else 1000 * lag.p50,
        p99_ms=None if lag.p99 is None else 1000 * lag.p99,
        max_ms=None if top is None else 1000 * top,
        late_checks=late,
        behind_lines=behind,
        cpu_cores=cpu / seconds if seconds > 0 else 0.0,
    )


def api_port(daemon_json: Mapping[str, Any]) -> int:
    api = daemon_json.get("api")
    listen = api.get("listen") if isinstance(api, dict) else None
    if not isinstance(listen, str) or ":" not in listen:
        raise BenchError(
            "--flood: healthd's daemon.json names no TCP API address (its command line needs "
            "--listen 127.0.0.1:0)"
        )
    host, _, port = listen.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise BenchError(f"--flood: healthd's API listens on {listen}, not on 127.0.0.1")
    return int(port)


@dataclass(frozen=True)
class FloodSettings:
    connections: int
    depth: int = 16
    path: str = "/v1/status"
    nice: int = 19


def measure(
    settings: FloodSettings,
    *,
    window: float,
    pid: int,
    status_dir: Path,
    workdir: Path,
    behind_lines: Callable[[], int],
    watch: Callable[[], None],
    say: Callable[[str], None],
) -> FloodResult:
    """The quiet window, then the flooded one (see the module's text)."""

    def one_window(label: str) -> tuple[dict[str, Any], dict[str, Any], float, float, int]:
        start = fresh_daemon_json(status_dir, watch)
        began, cpu0, behind0 = time.monotonic(), cpu_sample(pid).own, behind_lines()
        say(f"[flood] {label} window of {window:g}s (and up to the next daemon.json)")
        deadline = began + window
        while time.monotonic() < deadline:
            watch()
            time.sleep(0.2)
        end = fresh_daemon_json(status_dir, watch)
        seconds = time.monotonic() - began
        return start, end, seconds, cpu_sample(pid).own - cpu0, behind_lines() - behind0

    port = api_port(read_daemon_json(status_dir) or {})
    q_start, q_end, q_seconds, q_cpu, q_behind = one_window("quiet")
    quiet = lag_window(q_start, q_end, q_seconds, q_cpu, q_behind)

    argv = [
        sys.executable,
        str(CLIENT_SCRIPT),
        "--port",
        str(port),
        "--connections",
        str(settings.connections),
        "--depth",
        str(settings.depth),
        "--path",
        settings.path,
        "--duration",
        str(window + 2 * FRESH_TIMEOUT),  # stopped by the bench at the window's end
        "--nice",
        str(settings.nice),
    ]
    with (workdir / "flood.log").open("ab") as log:
        client = spawn(argv, stdout=subprocess.PIPE, stderr=log)
    try:
        say(f"[flood] {settings.connections} connections pipelining GET {settings.path}")
        f_start, f_end, f_seconds, f_cpu, f_behind = one_window("flooded")
    finally:
        stop_group(client, signal.SIGTERM, grace=10.0)
    flooded = lag_window(f_start, f_end, f_seconds, f_cpu, f_behind)
    assert client.stdout is not None
    out = client.stdout.read().decode(errors="replace")
    client.stdout.close()
    try:
        report = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"the flood client said nothing usable: {out[-500:]!r}") from None
    answers = {str(k): int(v) for k, v in report.get("statuses", {}).items()}
    client_seconds = float(report.get("seconds") or 0.0)
    ratio = None
    if quiet.p99_ms and flooded.p99_ms is not None:
        ratio = flooded.p99_ms / quiet.p99_ms
    return FloodResult(
        connections=settings.connections,
        depth=settings.depth,
        path=settings.path,
        quiet=quiet,
        flooded=flooded,
        p99_ratio=ratio,
        answers=answers,
        answers_per_s=sum(answers.values()) / client_seconds if client_seconds > 0 else 0.0,
        bytes_per_s=int(report.get("bytes", 0)) / client_seconds if client_seconds > 0 else 0.0,
        client_errors=int(report.get("errors", 0)),
    )
