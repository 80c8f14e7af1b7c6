"""One measured run of healthd for one check kind, from start of the target to cleanup."""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.certs import make_certificates
from bench.cleanup import Resources
from bench.daemon_json import read_daemon_json
from bench.errors import BenchError
from bench.flood import FloodResult, FloodSettings
from bench.flood import measure as measure_flood
from bench.histogram import window_lag
from bench.logscan import EventTally, LogFollower, parse_time
from bench.proc import CpuSample, cpu_sample, peak_rss_mb, sleep_until, spawn, stop_group
from bench.protocols import Counts, Target, TlsStats
from bench.targets import make_sentinel, make_target
from bench.timewait import HostTcpLimits, TimeWaitSampler, TimeWaitSummary, host_tcp_limits
from bench.workloads import SENTINELS, bench_specs, write_workloads

# --listen 127.0.0.1:0: the API on, as deployed, on a free port, so that a healthd already
# running on the machine (on 9780) does not stop the bench's from starting
DEFAULT_HEALTHD = (
    "healthd run --config-dir {config} --status-dir {status} --log-format json --listen 127.0.0.1:0"
)
STOP_GRACE = 20.0  # SIGTERM, then SIGKILL after this many seconds
DETECTION_SLACK = 5.0  # waiting for the sentinels' unhealthy events: the bound plus this
TIME_WAIT_SECONDS = 60.0  # how long Linux keeps a connection in TIME-WAIT (TCP_TIMEWAIT_LEN)


@dataclass(frozen=True)
class Options:
    kinds: tuple[str, ...] = ("http",)
    n: int = 1000
    interval: float = 1.0
    timeout: float = 5.0
    retries: int = 3
    warmup: float = 5.0
    window: float = 20.0
    healthd: str = DEFAULT_HEALTHD
    target: str = "auto"  # auto | nginx | builtin
    keep_alive: bool = False  # keep_alive: true in every workload file (http, https)
    keep: bool = False
    flood: int = 0  # connections of the API flood after the window (0: none); see flood.py
    flood_depth: int = 16
    flood_path: str = "/v1/status"

    @property
    def detection_bound(self) -> float:
        """When a sentinel must be unhealthy at the latest: interval*retries + timeout + 0.1s."""
        return self.interval * self.retries + self.timeout + 0.1


@dataclass
class KindResult:
    """Everything measured for one kind; ``None`` where a value could not be measured."""

    kind: str
    n: int
    target: str
    interval_s: float
    timeout_s: float
    retries: int
    window_s: float
    checks_in_window: int
    expected_per_s: float
    achieved_per_s: float
    keep_up_pct: float
    connections_per_s: float | None  # accepted at the target; None without a server (exec)
    cpu_ms_per_check: float | None
    children_cpu_ms_per_check: float | None
    cpu_cores: float
    peak_rss_mb: float
    processes: int
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_note: str
    daemon_checks_per_s: float | None
    detection_s: dict[str, float | None]
    detection_max_s: float | None
    detection_bound_s: float
    false_check_fails: int
    false_unhealthy: int
    sentinel_fails_before_break: int
    daemon_exit: int | None
    time_wait: TimeWaitSummary | None = None  # sampled over the window; None for exec
    tls: TlsStats | None = None  # handshakes at the target over the run (https)
    flood: FloodResult | None = None  # with --flood: lag without and with the API flooded
    workdir: str | None = None  # kept with --keep
    notes: list[str] = field(default_factory=list)


def daemon_argv(template: str, config: Path, status: Path) -> list[str]:
    """The healthd command line: ``template`` split like a shell, placeholders filled per word.

    A bare ``healthd`` means the one installed with this Python: the script beside
    ``sys.executable`` (a virtualenv's bin/) if there is one, else ``python -m healthd`` (not
    whatever ``healthd`` comes first on PATH, which may belong to another Python).
    """
    try:
        words = shlex.split(template)
        argv = [w.format(config=config, status=status) for w in words]
    except (ValueError, KeyError, IndexError) as exc:
        raise BenchError(
            f"--healthd {template!r}: {exc!r} (placeholders: {{config}} {{status}})"
        ) from None
    if not argv:
        raise BenchError("--healthd is empty")
    if argv[0] == "healthd":
        beside = Path(sys.executable).with_name("healthd")
        argv[:1] = [str(beside)] if beside.is_file() else [sys.executable, "-m", "healthd"]
    return argv


class DaemonProcess:
    """healthd under test: its own session, stdout and stderr into one log file."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            try:
                self.proc = spawn(self.argv, stdout=log, stderr=subprocess.STDOUT)
            except OSError as exc:
                raise BenchError(f"cannot start {shlex.join(self.argv)}: {exc}") from None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
            said = f"last lines of its log:\n{chr(10).join(lines)}" if lines else "its log is empty"
            raise BenchError(
                f"healthd ({shlex.join(self.argv)}) exited early with status "
                f"{self.proc.returncode}; {said}"
            )

    def stop(self) -> int | None:
        if self.proc is not None and self.exit_code is None:
            self.exit_code = stop_group(self.proc, signal.SIGTERM, STOP_GRACE)
        return self.exit_code


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic() right after the target's counters were read
    counts: Counts
    cpu: CpuSample
    daemon: dict[str, Any] | None


def snapshot(target: Target, pid: int, status_dir: Path) -> Snapshot:
    counts = target.counts()
    at = time.monotonic()
    return Snapshot(at, counts, cpu_sample(pid), read_daemon_json(status_dir))


def daemon_rate(start: Mapping[str, Any] | None, end: Mapping[str, Any] | None) -> float | None:
    """checks/s healthd says it did between two daemon.json snapshots."""
    if start is None or end is None:
        return None
    t0, t1 = parse_time(start.get("updated_at")), parse_time(end.get("updated_at"))
    c0, c1 = start.get("checks_total"), end.get("checks_total")
    if t0 is None or t1 is None or not isinstance(c0, int) or not isinstance(c1, int):
        return None
    seconds = (t1 - t0).total_seconds()
    return (c1 - c0) / seconds if seconds > 0 and c1 >= c0 else None


def _per_check_ms(seconds: float, checks: int) -> float | None:
    return 1000 * seconds / checks if checks > 0 else None


def run_kind(
    kind: str, opts: Options, *, nginx: str | None, say: Callable[[str], None]
) -> KindResult:
    """Start the targets and healthd, measure, break the sentinels, stop everything."""
    with Resources() as res:
        workdir = Path(tempfile.mkdtemp(prefix=f"healthd-bench-{kind}-"))
        if not opts.keep:
            res.callback(shutil.rmtree, workdir, ignore_errors=True)
        config_dir, status_dir = workdir / "config", workdir / "status"
        status_dir.mkdir()

        tls = make_certificates(workdir / "tls") if kind == "https" else None
        target = make_target(kind, opts.target, nginx, workdir, tls)
        res.callback(target.stop)
        measured = target.start()
        sentinel = make_sentinel(kind, workdir, tls)
        res.callback(sentinel.stop)
        sentinel_check = sentinel.start()
        specs = bench_specs(
            kind,
            opts.n,
            measured,
            sentinel_check,
            interval=opts.interval,
            timeout=opts.timeout,
            retries=opts.retries,
            keep_alive=opts.keep_alive,
        )
        write_workloads(config_dir, specs)
        where = f"{measured.host}:{measured.port}" if measured.port is not None else measured.target
        say(f"[{kind}] target {target.name} ({where}); {opts.n} workloads + 3 sentinels")
        say(f"[{kind}] files in {workdir}")

        daemon = DaemonProcess(
            daemon_argv(opts.healthd, config_dir, status_dir), workdir / "daemon.log"
        )
        res.callback(daemon.stop)
        daemon.start()
        follower = LogFollower(daemon.log_path)
        tally = EventTally()

        def watch() -> None:
            daemon.check_alive()
            tally.feed(follower.poll(), after_break=False)

        time_wait = None
        if measured.host is not None and measured.port is not None:
            time_wait = TimeWaitSampler(measured.host, measured.port)

        def watch_window() -> None:
            watch()
            if time_wait is not None:
                time_wait.maybe_sample()

        say(f"[{kind}] healthd started (pid {daemon.pid}); warm-up {opts.warmup:g}s")
        sleep_until(time.monotonic() + opts.warmup, check=watch)
        say(f"[{kind}] measuring for {opts.window:g}s")
        first = snapshot(target, daemon.pid, status_dir)
        if time_wait is not None:
            time_wait.sample()
        sleep_until(first.at + opts.window, check=watch_window)
        last = snapshot(target, daemon.pid, status_dir)
        if time_wait is not None:
            time_wait.sample()
        rss = peak_rss_mb(daemon.pid)
        flood = None
        if opts.flood:
            flood = measure_flood(
                FloodSettings(opts.flood, opts.flood_depth, opts.flood_path),
                window=opts.window,
                pid=daemon.pid,
                status_dir=status_dir,
                workdir=workdir,
                behind_lines=lambda: tally.scheduler_behind,
                watch=watch,
                say=say,
            )

        watch()
        sentinel.break_()
        broken_at = datetime.now(UTC)
        wait = opts.detection_bound + DETECTION_SLACK
        say(f"[{kind}] sentinels broken; waiting up to {wait:g}s for their unhealthy events")
        deadline = time.monotonic() + wait
        while not tally.all_detected() and time.monotonic() < deadline:
            time.sleep(0.05)
            daemon.check_alive()
            tally.feed(follower.poll(), after_break=True)

        exit_code = daemon.stop()
        tally.feed(follower.finish(), after_break=True)
        tls_stats = target.tls_stats()

    window = last.at - first.at
    checks = max(last.counts.checks - first.counts.checks, 0)
    own_cpu = last.cpu.own - first.cpu.own
    reaped_cpu = last.cpu.reaped_children - first.cpu.reaped_children
    expected = opts.n / opts.interval
    achieved = checks / window if window > 0 else 0.0
    connections_per_s = None
    if first.counts.connections is not None and last.counts.connections is not None:
        connections = max(last.counts.connections - first.counts.connections, 0)
        connections_per_s = connections / window if window > 0 else 0.0
    tw = time_wait.summary() if time_wait is not None else None
    detection: dict[str, float | None] = {}
    for name in SENTINELS:
        when = tally.detected.get(name)
        detection[name] = (when - broken_at).total_seconds() if when is not None else None
    measured_latencies = [v for v in detection.values() if v is not None]
    lag = window_lag(first.daemon, last.daemon)
    notes: list[str] = []
    if lag.note:
        notes.append(f"scheduler lag: {lag.note}")
    missing = [name for name, v in detection.items() if v is None]
    if missing:
        notes.append(f"no unhealthy event within {wait:g}s of the break for: {', '.join(missing)}")
    age = opts.warmup + opts.window  # of healthd, at the end of the window
    if tw is not None and tw.peak.client + tw.peak.server > 0 and age < TIME_WAIT_SECONDS:
        notes.append(
            f"TIME-WAIT lasts {TIME_WAIT_SECONDS:g}s and healthd ran for {age:g}s at the end "
            "of the window: the counts were still growing (steady state: the rate of such "
            f"closes times {TIME_WAIT_SECONDS:g}s)"
        )
    if exit_code not in (0, None):
        notes.append(f"healthd exited with status {exit_code} when stopped")
    if opts.keep:
        notes.append(f"kept {workdir}")
    return KindResult(
        kind=kind,
        n=opts.n,
        target=target.name,
        interval_s=opts.interval,
        timeout_s=opts.timeout,
        retries=opts.retries,
        window_s=window,
        checks_in_window=checks,
        expected_per_s=expected,
        achieved_per_s=achieved,
        keep_up_pct=100 * achieved / expected if expected > 0 else math.nan,
        connections_per_s=connections_per_s,
        cpu_ms_per_check=_per_check_ms(own_cpu, checks),
        children_cpu_ms_per_check=_per_check_ms(reaped_cpu, checks),
        cpu_cores=own_cpu / window if window > 0 else 0.0,
        peak_rss_mb=rss,
        processes=last.cpu.processes,
        lag_p50_ms=None if lag.p50 is None else 1000 * lag.p50,
        lag_p99_ms=None if lag.p99 is None else 1000 * lag.p99,
        lag_note=lag.note,
        daemon_checks_per_s=daemon_rate(first.daemon, last.daemon),
        detection_s=detection,
        detection_max_s=max(measured_latencies)
        if len(measured_latencies) == len(SENTINELS)
        else None,
        detection_bound_s=opts.detection_bound,
        false_check_fails=tally.check_fails,
        false_unhealthy=tally.unhealthy,
        sentinel_fails_before_break=tally.sentinel_fails_before_break,
        daemon_exit=exit_code,
        time_wait=tw,
        tls=tls_stats,
        flood=flood,
        workdir=str(workdir) if opts.keep else None,
        notes=notes,
    )


def environment_note(tcp: HostTcpLimits | None = None) -> str:
    """One line about the machine, for the report's header."""
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    tcp = tcp if tcp is not None else host_tcp_limits()
    return f"{os.cpu_count()} CPUs, load {load}, Python {sys.version.split()[0]}; {tcp.describe()}"
