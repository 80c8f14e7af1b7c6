"""healthd.process.run_process with real programs."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from healthd.process import run_process

from .harness import alive, wait_for


async def test_missing_program_is_a_spawn_error(tmp_path: Path) -> None:
    program = str(tmp_path / "no-such-program")
    outcome = await run_process([program, "--flag"], 5)
    assert not outcome.ok
    assert outcome.returncode is None
    assert program in outcome.spawn_error
    assert "No such file or directory" in outcome.spawn_error
    assert outcome.describe() == outcome.spawn_error


async def test_non_executable_file_is_a_spawn_error(tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    outcome = await run_process([str(script)], 5)
    assert not outcome.ok
    assert outcome.returncode is None
    assert outcome.spawn_error == f"{script}: Permission denied"


async def test_success_and_output(tmp_path: Path) -> None:
    outcome = await run_process(["sh", "-c", "echo out; echo err >&2"], 5)
    assert outcome.ok
    assert outcome.returncode == 0
    assert outcome.output == "out\nerr\n"
    assert outcome.describe() == ""


async def test_output_is_capped() -> None:
    outcome = await run_process(
        ["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' b"], 5, output_cap=100
    )
    assert outcome.ok
    assert outcome.output == "b" * 100 + "..."


async def test_output_under_the_cap_is_whole() -> None:
    outcome = await run_process(["sh", "-c", "printf %s 0123456789"], 5, output_cap=10)
    assert outcome.output == "0123456789"


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"
    outcome = await run_process(["sh", "-c", script], 0.5)
    assert outcome.timed_out
    assert outcome.returncode is None
    assert outcome.describe().startswith("timed out, process group killed")
    pid = int(pidfile.read_text())
    wait_for(f"background child {pid} to be killed", lambda: not alive(pid), timeout=3)


async def test_leftovers_are_killed_by_default(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 >/dev/null 2>&1 & echo $! > {pidfile}"
    outcome = await run_process(["sh", "-c", script], 5)
    assert outcome.ok
    pid = int(pidfile.read_text())
    try:
        wait_for(f"leftover {pid} to be killed", lambda: not alive(pid), timeout=3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_kill_leftovers_false_leaves_a_detached_child_running(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 >/dev/null 2>&1 & echo $! > {pidfile}"
    outcome = await run_process(["sh", "-c", script], 5, kill_leftovers=False)
    pid = int(pidfile.read_text())
    try:
        assert outcome.ok, outcome.describe()
        assert alive(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(f"child {pid} to die", lambda: not alive(pid), timeout=3)


async def test_child_holding_the_pipe_does_not_stall_a_restart_command(tmp_path: Path) -> None:
    # kill_leftovers=False and the child keeps stdout open: the runner must still return.
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; echo started"
    outcome = await run_process(["sh", "-c", script], 5, kill_leftovers=False)
    pid = int(pidfile.read_text())
    try:
        assert outcome.ok, outcome.describe()
        assert outcome.output == "started\n"
        assert not outcome.timed_out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_exit_status_and_signal_are_described() -> None:
    failed = await run_process(["sh", "-c", "echo nope; exit 4"], 5)
    assert failed.returncode == 4
    assert failed.describe() == "exit status 4: nope"
    killed = await run_process(["sh", "-c", "kill -TERM $$"], 5)
    assert killed.returncode == -signal.SIGTERM
    assert killed.describe() == "killed by SIGTERM"


async def test_env_is_passed() -> None:
    outcome = await run_process(["sh", "-c", 'echo "$HEALTHD_X"'], 5, env={"HEALTHD_X": "v1"})
    assert outcome.output == "v1\n"
