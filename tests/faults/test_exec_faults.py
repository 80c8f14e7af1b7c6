"""exec checks that misbehave, run by the real daemon: a grandchild that ignores SIGTERM and
holds stdout, 100 MB of output, death by a signal, a command that cannot be executed."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.harness import DaemonProc, wait_for, write

from .targets import (
    canary_keeps_going,
    checks_done,
    children_of,
    fd_count,
    gone,
    history,
    read_pids,
    rss_kib,
    script,
    start_with_canary,
    zombies_of,
)


@pytest.mark.parametrize("parent", ["hangs", "exits-0"])
def test_grandchild_that_ignores_sigterm_and_holds_stdout_is_killed(
    daemon: DaemonProc, tmp_path: Path, parent: str
) -> None:
    pids = tmp_path / "pids"
    check = script(
        tmp_path / "check.sh",
        f"echo $$ >> {pids}\n"
        f"n=$(wc -l < {pids})\n"
        f"/bin/sh -c 'trap \"\" TERM; echo $$ >> {pids}; exec /bin/sleep 600' &\n"
        f'while [ "$(wc -l < {pids})" -le "$n" ]; do sleep 0.01; done\n'  # it is recorded
        + ("exec /bin/sleep 600\n" if parent == "hangs" else "exit 0\n"),
    )
    timeout = 0.5 if parent == "hangs" else 2.0
    write(daemon, "stubborn", "exec", target=str(check), timeout=timeout, retries=1, interval=2.0)
    try:
        client = start_with_canary(daemon)
        status = client.wait_status("stubborn", lambda s: s["total_checks"] >= 1)
        first = read_pids(pids)
        assert len(first) == 2  # the check and its grandchild
        gone(first, timeout=1.0)  # the whole tree, at once
        assert children_of(daemon.pid) == []  # the next check is 2s away
        # a zombie for a moment is fine (it died; the reaping follows), as in the soak test
        wait_for("no zombie of the daemon", lambda: zombies_of(daemon.pid) == [] or None, 1.0)
        duration = status["last_check_duration_seconds"]
        if parent == "hangs":
            assert status["state"] == "unhealthy"
            assert status["last_error"] == f"timed out after 500ms: sh -c '{check}'"
            assert 0.5 <= duration < 0.8
        else:
            # healthy once the check exits; the grandchild's open stdout holds it up only
            # for process.EOF_GRACE (0.2s), not until the timeout
            assert status["state"] == "healthy", status
            assert duration < 0.5
        canary_keeps_going(client)
        client.wait_status("stubborn", lambda s: s["total_checks"] >= 3)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        gone(read_pids(pids))


def test_100_mb_of_output_is_capped_fast_and_memory_stays_flat(daemon: DaemonProc) -> None:
    command = "yes healthd-fault | head -c 100000000; exit 3"
    write(daemon, "chatty", "exec", target=command, timeout=5.0, retries=1, interval=0.2)
    client = start_with_canary(daemon)
    client.wait_status("chatty", lambda s: s["total_checks"] >= 2)
    rss, fds = rss_kib(daemon.pid), fd_count(daemon.pid)
    done = checks_done(client, "chatty")
    status = client.wait_status("chatty", lambda s: s["total_checks"] >= done + 5, timeout=30)
    grown = rss_kib(daemon.pid) - rss
    assert fd_count(daemon.pid) <= fds + 2  # a pipe or pidfd left per check: +5 or more
    canary_keeps_going(client)
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 5 checks printing 100 MB each"
    error = status["last_error"]
    assert error.startswith("exec check failed: exit status 3: healthd-fault\nhealthd-fault\n")
    assert error.endswith("...")  # cut, and says so
    assert len(error) <= len("exec check failed: exit status 3: ") + 4096 + 3
    for result in history(client, "chatty"):
        assert result["duration_seconds"] < 2.0, result  # read as it comes, never stalls
    assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("kill -KILL $$", "killed by SIGKILL"),
        ("ulimit -c 0; kill -SEGV $$", "killed by SIGSEGV"),
        ("ulimit -c 0; exec /bin/sh -c 'kill -ABRT $$'", "killed by SIGABRT"),
    ],
    ids=["SIGKILL", "SIGSEGV", "SIGABRT"],
)
def test_check_killed_by_a_signal_says_which(daemon: DaemonProc, command: str, reason: str) -> None:
    write(daemon, "crash", "exec", target=command, timeout=2.0, retries=1)
    client = start_with_canary(daemon)
    status = client.wait_status("crash", lambda s: s["state"] == "unhealthy")
    canary_keeps_going(client)
    assert status["last_error"] == f"exec check failed: {reason}"
    assert status["last_check_duration_seconds"] < 0.5
    assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("mode", "reason"),
    [(0o644, "Permission denied"), (None, "No such file or directory")],
    ids=["not-executable", "missing"],
)
def test_command_that_cannot_be_executed_is_a_clear_failure(
    daemon: DaemonProc, tmp_path: Path, mode: int | None, reason: str
) -> None:
    path = tmp_path / "check.sh"
    if mode is not None:
        script(path, "exit 0\n", mode)  # as root too: exec needs an x bit
    write(daemon, "noexec", "exec", target=str(path), timeout=2.0, retries=2)
    client = start_with_canary(daemon)
    status = client.wait_status("noexec", lambda s: s["state"] == "unhealthy")
    canary_keeps_going(client)
    assert status["last_error"] == f"exec check failed: {path}: {reason}"
    assert status["last_check_duration_seconds"] < 0.5
    assert daemon.terminate() == 0
