"""Exec checks at volume: every child reaped, no threads, output kept apart, deadlines kept.

Single-check behaviour (exit status text, the output cap, signals, process-group kills) is in
test_checks.py and test_process.py; these tests run many checks at once and reuse probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import uvloop

from healthd.checks import run_check
from healthd.checks.exec import ExecProbe
from healthd.config.workload import WorkloadConfig
from healthd.model import CheckResult

from .harness import pids_with


def exec_cfg(command: str, timeout: float = 5.0) -> WorkloadConfig:
    return WorkloadConfig(workload="w", type="exec", target=command, timeout=timeout)


def children() -> dict[int, str]:
    """This process's child processes: pid -> state (``Z`` for a zombie nobody reaped)."""
    me = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "PID (comm) STATE PPID ...": comm may hold spaces and parentheses
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == me:
            found[int(entry)] = state
    return found


def kill_and_reap(pids: set[int]) -> None:
    """Clean up after a failed test: kill these children's groups and reap the children."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def zombies() -> set[int]:
    return {pid for pid, state in children().items() if state == "Z"}


async def no_new_children(before: dict[int, str], timeout: float = 5.0) -> dict[int, str]:
    """Wait (with the loop running: it reaps) until no child exists that did not before."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        new = {pid: state for pid, state in children().items() if pid not in before}
        if not new or loop.time() > deadline:
            return new
        await asyncio.sleep(0.05)


async def check(probe: ExecProbe) -> CheckResult:
    result: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
    probe.start("", result.set_result)
    async with asyncio.timeout(probe.cfg.timeout + 5):
        return await result


async def test_200_checks_leave_no_zombies_and_start_no_threads() -> None:
    threads, before = threading.active_count(), children()
    commands = ["true" if i % 2 == 0 else "exit 3" for i in range(200)]
    results: list[CheckResult] = []
    for start in range(0, len(commands), 50):  # 50 at a time: plenty at once, gentle on CPU
        batch = commands[start : start + 50]
        results += await asyncio.gather(*(run_check(exec_cfg(c), "") for c in batch))
    for command, result in zip(commands, results, strict=True):
        if command == "true":
            assert result.ok, result.error
        else:
            assert not result.ok
            assert result.error == "exec check failed: exit status 3"
    # Every result is reported after its child was reaped: nothing is left, not even briefly.
    assert {pid: s for pid, s in children().items() if pid not in before} == {}
    assert zombies() <= set(before)
    assert threading.active_count() == threads  # the spawner pool, not one per child


async def test_output_of_concurrent_checks_stays_with_its_own_check() -> None:
    threads, before = threading.active_count(), children()
    probes = [ExecProbe(exec_cfg(f"echo id-{i}; echo err-{i} >&2; exit 1")) for i in range(40)]
    try:
        results = await asyncio.gather(*(check(p) for p in probes))
    finally:
        for probe in probes:
            probe.close()
    for i, result in enumerate(results):
        assert result.error == f"exec check failed: exit status 1: id-{i}\nerr-{i}"
    assert await no_new_children(before) == {}
    assert threading.active_count() == threads  # the spawner pool, not one per child


async def test_a_probe_started_again_and_again_reports_each_run_alone(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    command = f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}; "
    probe = ExecProbe(exec_cfg(command + "echo run-$n; [ $n -ne 2 ] || exit 0; exit 7"))
    try:
        results = [await check(probe) for _ in range(5)]
    finally:
        probe.close()
    assert [r.ok for r in results] == [False, False, True, False, False]
    assert [r.error for r in results] == [
        "exec check failed: exit status 7: run-0",
        "exec check failed: exit status 7: run-1",
        "",
        "exec check failed: exit status 7: run-3",
        "exec check failed: exit status 7: run-4",
    ]


async def test_timeouts_among_quick_checks_are_killed_and_reaped() -> None:
    threads, before = threading.active_count(), children()
    mark = f"healthd-test-{uuid.uuid4().hex}"
    slow = [ExecProbe(exec_cfg(f"sleep 30; : {mark}", timeout=0.3)) for _ in range(5)]
    quick = [ExecProbe(exec_cfg("echo fine")) for _ in range(10)]
    try:
        results = await asyncio.gather(*(check(p) for p in [*slow, *quick]))
    finally:
        for probe in [*slow, *quick]:
            probe.close()
    for result in results[: len(slow)]:
        assert not result.ok
        assert result.error == f"timed out after 300ms: sh -c 'sleep 30; : {mark}'"
        assert result.duration >= 0.3 - 0.005  # the loop clock has 1 ms resolution
    for result in results[len(slow) :]:
        assert result.ok, result.error
    assert await no_new_children(before) == {}
    assert pids_with(mark) == []
    assert threading.active_count() == threads  # the spawner pool, not one per child


async def test_cancelled_check_reports_nothing_and_its_process_is_killed_and_reaped() -> None:
    before = children()
    mark = f"healthd-test-{uuid.uuid4().hex}"
    probe = ExecProbe(exec_cfg(f"sleep 30; : {mark}", timeout=10.0))
    reported: list[CheckResult] = []
    probe.start("", reported.append)
    for _ in range(250):
        if pids_with(mark):
            break
        await asyncio.sleep(0.02)
    assert pids_with(mark), "the command never started"
    probe.cancel()
    assert not probe.running
    assert await no_new_children(before) == {}
    assert pids_with(mark) == []
    await asyncio.sleep(0.1)
    assert reported == []
    probe.close()


async def test_no_pipe_to_be_had_is_a_failed_check_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_pipes(flags: int) -> tuple[int, int]:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    before = children()
    monkeypatch.setattr(os, "pipe2", no_pipes)
    probe = ExecProbe(exec_cfg("true", timeout=1.0))
    try:
        result = await check(probe)
    finally:
        probe.close()
        monkeypatch.undo()
    assert not result.ok
    assert result.error.startswith("exec check failed: ")
    assert "too many open files" in result.error.lower()
    assert not probe.running
    assert await no_new_children(before) == {}


async def test_spawned_child_whose_pidfd_cannot_be_had_is_not_left_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command started, but no pidfd to watch it (EMFILE): it must not outlive the check."""

    def no_pidfds(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    before = children()
    mark = f"healthd-test-{uuid.uuid4().hex}"
    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    probe = ExecProbe(exec_cfg(f"sleep 30; : {mark}", timeout=5.0))
    try:
        result = await check(probe)
        monkeypatch.undo()
        assert not result.ok
        assert "too many open files" in result.error.lower()
        left = await no_new_children(before, timeout=2.0)
        assert left == {}
        assert pids_with(mark) == []
    finally:
        probe.close()
        monkeypatch.undo()
        kill_and_reap({*pids_with(mark), *(set(children()) - set(before))})


def test_checks_cancelled_as_the_loop_stops_leave_no_command_running() -> None:
    """The daemon's stop: probes are closed, then the loop ends. A command whose start was
    under way (or queued) at that moment must not start anyway and run on unsupervised."""
    mark = f"healthd-test-{uuid.uuid4().hex}"
    before = children()

    async def start_then_cancel() -> None:
        probes = [ExecProbe(exec_cfg(f"sleep 30; : {mark}")) for _ in range(20)]
        for probe in probes:
            probe.start("", lambda result: None)
        for probe in probes:
            probe.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(start_then_cancel())
    finally:
        loop.close()
    try:
        time.sleep(0.5)  # whatever was still being started has started by now
        assert pids_with(mark) == []  # killed ones may linger as zombies: the loop is gone
    finally:
        kill_and_reap({*pids_with(mark), *(set(children()) - set(before))})
