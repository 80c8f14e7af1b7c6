"""The scheduler inside a real Daemon (in-process) with real exec checks, overloaded on purpose.

Six workloads want a check every 100ms and each check takes 300ms, but only two exec checks
may run at once: the schedule has to stretch (lag) instead of checks failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import os
import shlex
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from healthd.config import editor
from healthd.config.daemon import DaemonSettings
from healthd.config.workload import WorkloadConfig
from healthd.engine.daemon import Daemon
from healthd.engine.lag import BOUNDS
from healthd.engine.persist import DAEMON_FILENAME
from healthd.events import EventBus
from healthd.logs import make_logger
from healthd.model import EventType, State
from healthd.testing import RecordingSink

WORKLOADS = 6


@dataclass
class Running:
    daemon: Daemon
    task: asyncio.Task[None]
    sink: RecordingSink
    log: io.StringIO
    records: Path

    def log_events(self, name: str) -> list[str]:
        return [line for line in self.log.getvalue().splitlines() if f"event={name}" in line]

    def intervals(self) -> list[tuple[int, int | None]]:
        """(start, end) of every check command run, in ns; end None when it never ended."""
        out: list[tuple[int, int | None]] = []
        for path in sorted(self.records.glob("*.log")):
            start: int | None = None
            for line in path.read_text().splitlines():
                kind, _, stamp = line.partition(" ")
                if kind == "s":
                    if start is not None:
                        out.append((start, None))
                    start = int(stamp)
                elif kind == "e" and start is not None:
                    out.append((start, int(stamp)))
                    start = None
            if start is not None:
                out.append((start, None))
        return out

    async def wait_for(
        self, what: str, condition: Callable[[], object], timeout: float = 15.0
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if self.task.done():
                self.task.result()
                raise AssertionError(f"the daemon stopped while waiting for {what}")
            if loop.time() > deadline:
                raise AssertionError(f"gave up after {timeout}s waiting for {what}")
            await asyncio.sleep(0.02)


def max_overlap(intervals: list[tuple[int, int | None]]) -> int:
    """The most intervals open at one instant (an end before a start at the same stamp)."""
    points: list[tuple[float, int]] = []
    for start, end in intervals:
        points.append((start, 1))
        points.append((float("inf") if end is None else end, -1))
    most = current = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        current += delta
        most = max(most, current)
    return most


@contextlib.asynccontextmanager
async def overloaded_daemon(
    tmp_path: Path, *, sleep: float = 0.3, **settings: Any
) -> AsyncIterator[Running]:
    """A Daemon checking WORKLOADS exec workloads whose commands log start and end times."""
    config_dir, status_dir, records = tmp_path / "config", tmp_path / "status", tmp_path / "rec"
    records.mkdir()
    for i in range(WORKLOADS):
        record = shlex.quote(str(records / f"w{i}.log"))
        command = (
            f'echo "s $(date +%s%N)" >> {record}; sleep {sleep}; echo "e $(date +%s%N)" >> {record}'
        )
        editor.write(
            config_dir,
            WorkloadConfig(
                workload=f"w{i}", type="exec", target=command, interval=0.1, timeout=5.0
            ),
        )
    stream = io.StringIO()
    log = make_logger(stream=stream)
    sink = RecordingSink()
    values: dict[str, Any] = {
        "config_dir": config_dir,
        "status_dir": status_dir,
        "exec_in_flight": 2,
        "first_check_within": 0.05,
        "status_flush_interval": 0.1,
    } | settings
    daemon = Daemon(DaemonSettings(**values), bus=EventBus(log, [sink]), log=log)
    task = asyncio.create_task(daemon.run())
    running = Running(daemon, task, sink, stream, records)
    try:
        async with asyncio.timeout(10):
            await daemon.started.wait()
        yield running
    finally:
        if not task.done():
            daemon.request_stop()
            daemon.request_stop()  # forced: whatever a failed test left running is cancelled
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await task
        gc.unfreeze()  # Daemon.run froze everything the test process had


def total_checks(daemon: Daemon) -> int:
    return sum(s.total_checks for s in daemon.statuses.values())


async def test_exec_in_flight_caps_concurrency_and_the_schedule_stretches(tmp_path: Path) -> None:
    async with overloaded_daemon(tmp_path) as run:
        daemon = run.daemon
        await run.wait_for("a first round of checks", lambda: total_checks(daemon) >= WORKLOADS)
        lag_count = daemon.scheduler.lag.count
        await run.wait_for(
            "every workload to be checked twice",
            lambda: all(s.total_checks >= 2 for s in daemon.statuses.values()),
        )
        assert daemon.scheduler.lag.count > lag_count
        assert daemon.scheduler.checks_total == daemon.scheduler.lag.count
        daemon.request_stop()
        async with asyncio.timeout(10):
            await run.task
    intervals = run.intervals()
    assert len(intervals) >= 2 * WORKLOADS
    assert all(end is not None for _, end in intervals)  # every check ran to its end
    assert max_overlap(intervals) == 2
    assert EventType.CHECK_FAIL not in run.sink.types()
    assert EventType.UNHEALTHY not in run.sink.types()
    assert all(s.state is State.HEALTHY for s in daemon.statuses.values())
    assert total_checks(daemon) == daemon.scheduler.checks_total  # every start has its result
    hist = daemon.scheduler.lag
    late = hist.count - hist.cumulative()[BOUNDS.index(0.1)]
    assert late > 0  # checks waited their turn behind the cap: lag shows it


async def test_overload_logs_scheduler_behind(tmp_path: Path) -> None:
    async with overloaded_daemon(tmp_path, lag_warning=0.001) as run:
        await run.wait_for("scheduler_behind", lambda: run.log_events("scheduler_behind"))
        assert run.daemon.scheduler.behind
        line = run.log_events("scheduler_behind")[0]
        assert "level=warning" in line
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        assert float(fields["lag_p99"]) > 0.001
        assert int(fields["checks"]) >= 1
        assert EventType.CHECK_FAIL not in run.sink.types()


async def test_daemon_json_reports_the_scheduler(tmp_path: Path) -> None:
    path = tmp_path / "status" / DAEMON_FILENAME

    def summary() -> dict[str, Any]:
        data = json.loads(path.read_text())
        assert isinstance(data, dict)
        return data

    def checked(data: dict[str, Any]) -> bool:
        return bool(data["checks_total"] >= WORKLOADS)

    async with overloaded_daemon(tmp_path) as run:
        await run.wait_for("daemon.json", path.exists)
        await run.wait_for("daemon.json to count the checks", lambda: checked(summary()))
        during = summary()
        run.daemon.request_stop()
        async with asyncio.timeout(10):
            await run.task
    after = summary()
    for data in (during, after):
        assert data["pid"] == os.getpid()
        assert data["workloads"] == WORKLOADS
        scheduler = data["scheduler"]
        buckets = scheduler["lag_seconds_buckets"]
        assert [b for b, _ in buckets] == [*BOUNDS, "+Inf"]
        counts = [c for _, c in buckets]
        assert counts == sorted(counts)  # cumulative
        assert counts[-1] == scheduler["lag_seconds_count"] == data["checks_total"]
        assert scheduler["lag_seconds_sum"] >= 0
        assert isinstance(scheduler["behind"], bool)
        assert {"busy", "queued", "started_at", "updated_at"} <= {*scheduler, *data}
    assert after["checks_total"] >= during["checks_total"]
    assert after["scheduler"]["busy"] == 0  # stopped: nothing in flight any more
    assert after["scheduler"]["queued"] == 0
    statuses = json.loads((tmp_path / "status" / "statuses.json").read_text())
    assert [s["workload"] for s in statuses] == [f"w{i}" for i in range(WORKLOADS)]
    assert sum(s["total_checks"] for s in statuses) == after["checks_total"]


async def test_stop_with_checks_in_flight_returns_long_before_stop_grace(tmp_path: Path) -> None:
    async with overloaded_daemon(tmp_path, stop_grace=30.0) as run:
        daemon = run.daemon
        await run.wait_for("checks in flight", lambda: daemon.scheduler.busy == 2)
        await run.wait_for("queued checks", lambda: any(daemon.scheduler.gates["exec"].waiting))
        started = time.monotonic()
        daemon.request_stop()
        async with asyncio.timeout(10):
            await run.task
        elapsed = time.monotonic() - started
        assert elapsed < 10, elapsed
        assert run.log_events("daemon_stopped")
        assert not run.log_events("stop_forced")  # drained: the checks in flight finished
        stopped_with = len(run.intervals())
        assert all(end is not None for _, end in run.intervals())
        await asyncio.sleep(0.5)
        assert len(run.intervals()) == stopped_with  # nothing queued started after the stop
    assert daemon.scheduler.busy == 0
    assert total_checks(daemon) == daemon.scheduler.checks_total


async def test_commands_killed_by_the_stop_of_the_service_are_not_failures(
    tmp_path: Path,
) -> None:
    """systemctl stop signals the whole cgroup: the commands of checks in flight die of the
    same SIGTERM as the daemon, and may be reaped before the daemon sees its own."""
    async with overloaded_daemon(tmp_path, sleep=30, stop_grace=30.0) as run:
        daemon = run.daemon
        await run.wait_for("checks in flight", lambda: daemon.scheduler.busy == 2)
        await run.wait_for("both commands started", lambda: len(run.intervals()) == 2)
        for child in daemon.scheduler.runners.values():
            command = getattr(child.probe, "_child", None)
            if command is not None and command.pid:
                os.killpg(command.pid, signal.SIGTERM)
        daemon.request_stop()
        async with asyncio.timeout(10):
            await run.task
        assert EventType.CHECK_FAIL not in run.sink.types()
        assert run.log_events("daemon_stopped")
