"""The command sink end to end (the real daemon runs a real program with each event's JSON on
its stdin), and ``run_process``'s stdin under it: large inputs fed without blocking the loop,
children that do not read it, deadlines and cancellation that leave no descriptor behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from healthd.process import run_process

from .harness import DaemonProc, alive, deliveries, wait_for, write


def sinks(daemon: DaemonProc, *configured: dict[str, Any]) -> None:
    daemon.daemon_config.write_text(yaml.safe_dump({"sinks": list(configured)}))


def command_sink(argv: list[str], **fields: Any) -> dict[str, Any]:
    return {"name": "run", "type": "command", "command": argv, **fields}


def flapper(daemon: DaemonProc, name: str, tmp: Path) -> Path:
    """An exec workload that fails while its flag file exists; returns the flag."""
    flag = tmp / f"{name}.broken"
    write(daemon, name, "exec", target=f"test ! -e {flag}", retries=1)
    return flag


def settled(daemon: DaemonProc, count: int) -> list[dict[str, Any]] | None:
    found = deliveries(daemon, "run")
    done = len(found) == count and all(r["state"] != "pending" for r in found)
    return found if done else None


def script(tmp: Path, name: str, body: str) -> Path:
    path = tmp / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


# -- the daemon -----------------------------------------------------------------------------------


def test_the_command_gets_each_events_json_on_stdin(daemon: DaemonProc, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    notify = script(tmp_path, "notify", f'cat >> "{out}"\n')
    sinks(daemon, command_sink([str(notify)], events=["unhealthy", "healthy"]))
    flag = flapper(daemon, "job", tmp_path)
    daemon.start()
    daemon.wait_status("job", lambda s: s["state"] == "healthy")
    flag.touch()
    daemon.wait_status("job", lambda s: s["state"] == "unhealthy")
    flag.unlink()
    found = wait_for("both delivered", lambda: settled(daemon, 2), detail=daemon.log)
    assert [r["state"] for r in found] == ["delivered", "delivered"]
    lines = out.read_text().splitlines()  # one line each: the JSON ends with a newline
    events = [json.loads(line) for line in lines]
    assert [(e["type"], e["workload"]) for e in events] == [
        ("unhealthy", "job"),
        ("healthy", "job"),
    ]
    assert [e["id"] for e in events] == [r["event_id"] for r in found]
    assert (events[0]["state_from"], events[0]["state_to"]) == ("healthy", "unhealthy")
    assert events[1]["state_to"] == "healthy"
    assert all(e["host"] and e["timestamp"].endswith("Z") for e in events)
    assert daemon.terminate() == 0


def test_a_failing_command_is_retried_until_it_succeeds(daemon: DaemonProc, tmp_path: Path) -> None:
    tries, out = tmp_path / "tries", tmp_path / "got.json"
    notify = script(
        tmp_path,
        "notify",
        f'n=$(($(cat "{tries}" 2>/dev/null || echo 0) + 1)); echo $n > "{tries}"\n'
        f'if [ $n -lt 3 ]; then echo "pager busy (try $n)"; exit 3; fi\n'
        f'cat > "{out}"\n',
    )
    sinks(daemon, command_sink([str(notify)], events=["daemon_started"]))
    daemon.start()
    (row,) = wait_for("delivered", lambda: settled(daemon, 1), timeout=20, detail=daemon.log)
    assert (row["state"], row["attempts"]) == ("delivered", 3)
    assert json.loads(out.read_text())["type"] == "daemon_started"  # the third one read it all
    retries = daemon.events("delivery_retry")
    assert len(retries) == 2
    assert "exit status 3: pager busy (try 1)" in retries[0]
    assert daemon.terminate() == 0


def test_a_command_past_its_timeout_is_killed_with_its_group_and_retried(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    tries, pid_file = tmp_path / "tries", tmp_path / "hung.pid"
    notify = script(
        tmp_path,
        "notify",
        f'n=$(($(cat "{tries}" 2>/dev/null || echo 0) + 1)); echo $n > "{tries}"\n'
        f'if [ $n -eq 1 ]; then echo "calling the pager"; sleep 30 & echo $! > "{pid_file}"; '
        "wait; fi\n"
        "cat > /dev/null\n",
    )
    sinks(daemon, command_sink([str(notify)], timeout="1s", events=["daemon_started"]))
    daemon.start()
    (row,) = wait_for("delivered", lambda: settled(daemon, 1), timeout=20, detail=daemon.log)
    assert (row["state"], row["attempts"]) == ("delivered", 2)
    (retry,) = daemon.events("delivery_retry")
    assert "timed out, process group killed: calling the pager" in retry
    assert not alive(int(pid_file.read_text()))  # the grandchild went with the group
    assert daemon.terminate() == 0


@pytest.mark.parametrize("problem", ["missing", "not executable"])
def test_a_program_that_cannot_run_fails_permanently(
    daemon: DaemonProc, tmp_path: Path, problem: str
) -> None:
    program = tmp_path / "notify"
    if problem == "not executable":
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o644)
    sinks(daemon, command_sink([str(program)], events=["daemon_started", "unhealthy"]))
    flag = flapper(daemon, "job", tmp_path)
    daemon.start()
    flag.touch()
    found = wait_for("both settled", lambda: settled(daemon, 2), detail=daemon.log)
    reason = "No such file or directory" if problem == "missing" else "Permission denied"
    for row in found:  # each event tried once, failed, and the next one tried
        assert (row["state"], row["attempts"]) == ("failed", 1)
        assert row["last_error"] == f"cannot run {program}: {program}: {reason}"
    assert daemon.events("delivery_retry") == []
    assert daemon.terminate() == 0


# -- run_process's stdin --------------------------------------------------------------------------

BIG = os.urandom(8 << 20)  # far more than a pipe holds (64 KiB)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_large_stdin_is_fed_without_blocking_the_loop() -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    fds = open_fds()
    ticks = asyncio.create_task(ticker())
    try:
        # a slow reader: the pipe is full most of the time, the loop writes as it drains
        argv = ["sh", "-c", "sleep 0.3; sha256sum"]
        outcome = await run_process(argv, 20, stdin=BIG)
    finally:
        ticks.cancel()
    assert outcome.ok, outcome.describe()
    assert outcome.output.split()[0] == hashlib.sha256(BIG).hexdigest()
    assert len(gaps) > 20
    assert max(gaps) < 0.2  # the loop went on while 8 MiB went through a 64 KiB pipe
    assert open_fds() == fds


async def test_stdin_is_closed_after_it_is_written() -> None:
    outcome = await run_process(["cat"], 5, stdin=b"one event\n")  # cat ends at EOF only
    assert (outcome.returncode, outcome.output) == (0, "one event\n")
    empty = await run_process(["cat"], 5)  # no stdin: /dev/null, as before
    assert (empty.returncode, empty.output) == (0, "")


@pytest.mark.parametrize("argv", [["true"], ["sh", "-c", "exec 0<&-; sleep 0.1; exit 4"]])
async def test_a_child_that_does_not_read_its_stdin_is_no_error(argv: list[str]) -> None:
    fds = open_fds()
    for _ in range(3):
        outcome = await run_process(argv, 5, stdin=BIG)  # EPIPE on the rest of it
        assert not outcome.timed_out
        assert outcome.returncode == (0 if argv == ["true"] else 4)
        assert outcome.spawn_error == ""
    assert open_fds() == fds


async def test_the_deadline_and_cancellation_leave_no_descriptor_behind() -> None:
    fds = open_fds()
    timed_out = await run_process(["sleep", "5"], 0.2, stdin=BIG)  # never reads
    assert timed_out.timed_out
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):  # the caller's deadline: the child is detached
            await run_process(["sleep", "5"], 10, stdin=BIG)
    await asyncio.sleep(0.3)  # the detached child is reaped by the loop
    assert open_fds() == fds


async def test_a_missing_program_reports_its_errno() -> None:
    outcome = await run_process(["/nonexistent/notify"], 5, stdin=b"{}")
    assert outcome.spawn_error == "/nonexistent/notify: No such file or directory"
    assert outcome.spawn_errno == 2
