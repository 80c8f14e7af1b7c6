"""A command that escapes its process group with setsid(), as the finding's attacker would:
an exec check (as root, and as ``user: nobody``) starts a grandchild in a session of its own
and records its pid. Whether the check exits or hangs to its deadline, in the daemon or in
``healthd check``, that grandchild must be gone and reaped (no zombie) when the check ends;
what a restart command starts must not be. Needs cgroup v2 that root may write (CI has it)."""

from __future__ import annotations

import os
import pwd
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from healthd.containment import Cgroups
from integration.harness import DaemonProc, alive, run_cli, wait_for, write

from .targets import start_with_canary, zombies_of

NOBODY = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory any user may write in (a check as nobody records its pids there)."""
    path = Path(tempfile.mkdtemp(prefix="healthd-escape-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        for pid in _pids(path / "pids"):
            if alive(pid):
                os.kill(pid, 9)
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


@pytest.fixture(autouse=True)
def _cgroup_per_command(daemon: DaemonProc) -> None:
    """Containment is asked for (it is off by default: see docs/PERFORMANCE.md); a test may
    write its own daemon config over this one."""
    daemon.daemon_config.write_text("security:\n  cgroup_per_command: true\n")


def _pids(path: Path) -> list[int]:
    return [int(w) for w in path.read_text().split()] if path.exists() else []


def _escaping(pids: Path, then: str) -> tuple[str, ...]:
    """A check that starts `setsid sleep 600` in the background, waits until the grandchild
    has recorded its pid, then ``then``."""
    script = (
        f"setsid sh -c 'echo $$ >> {pids}; exec sleep 600' &\n"
        f"while [ ! -s {pids} ]; do sleep 0.01; done\n"
        f"{then}\n"
    )
    return ("sh", "-c", script)


def _reaped(pid: int) -> bool:
    """Gone for good: not running and not a zombie anybody still has to reap."""
    return not Path(f"/proc/{pid}").exists()


def _owner(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid for {pid}")


def test_the_host_allows_a_cgroup_per_command() -> None:
    """The tests below rely on it; where it is missing the README says commands are killed by
    process group only, and this names why."""
    probe = Cgroups()
    assert probe.enable(), probe.why_not
    probe.close()


@pytest.mark.parametrize("user", [None, "nobody"])
@pytest.mark.parametrize("parent", ["exits", "hangs"])
def test_setsid_grandchild_of_an_exec_check_dies_with_the_check(
    daemon: DaemonProc, shared: Path, parent: str, user: str | None
) -> None:
    pids = shared / "pids"
    then = "exec sleep 600" if parent == "hangs" else "exit 0"
    extra = {"user": user} if user else {}
    write(
        daemon,
        "escape",
        "exec",
        command=_escaping(pids, then),
        timeout=1.0,
        interval=30.0,
        retries=1,
        **extra,
    )
    client = start_with_canary(daemon)
    status = client.wait_status("escape", lambda s: s["total_checks"] >= 1)
    (grandchild,) = _pids(pids)
    assert status["state"] == ("unhealthy" if parent == "hangs" else "healthy"), status
    wait_for(f"the setsid grandchild {grandchild} to be reaped", lambda: _reaped(grandchild), 3)
    assert zombies_of(daemon.pid) == []
    assert daemon.terminate() == 0


def test_setsid_grandchild_as_nobody_is_nobodys(daemon: DaemonProc, shared: Path) -> None:
    """The attacker's process really is an unprivileged one (what the cgroup must hold)."""
    pids = shared / "pids"
    seen = shared / "uid"
    write(
        daemon,
        "escape",
        "exec",
        command=_escaping(
            pids,
            f"stat -c %u /proc/$(cat {pids}) > {seen}; exec sleep 600",
        ),
        timeout=1.0,
        interval=30.0,
        retries=1,
        user="nobody",
    )
    client = start_with_canary(daemon)
    client.wait_status("escape", lambda s: s["total_checks"] >= 1)
    (grandchild,) = _pids(pids)
    assert seen.read_text().strip() == str(NOBODY)
    wait_for(f"{grandchild} to be reaped", lambda: _reaped(grandchild), 3)
    assert daemon.terminate() == 0


@pytest.mark.parametrize("parent", ["exits", "hangs"])
def test_setsid_grandchild_of_healthd_check_dies_with_the_check(
    daemon: DaemonProc, shared: Path, parent: str
) -> None:
    pids = shared / "pids"
    then = "exec sleep 600" if parent == "hangs" else "exit 0"
    write(daemon, "escape", "exec", command=_escaping(pids, then), timeout=1.0, user="nobody")
    done = run_cli(["check", "escape", "--config-dir", str(daemon.config_dir)], daemon.env, 30)
    assert ("unhealthy" in done.stdout) == (parent == "hangs"), done
    (grandchild,) = _pids(pids)
    # healthd check has exited: the grandchild was killed and reaped before it did
    assert _reaped(grandchild), Path(f"/proc/{grandchild}/stat").read_text()


def test_no_zombies_pile_up_from_adopted_processes(daemon: DaemonProc) -> None:
    """A check whose setsid grandchild outlives it by a moment, 40 times: each is adopted,
    killed with its check's cgroup and reaped; the daemon keeps no zombie."""
    write(
        daemon,
        "orphans",
        "exec",
        command=("sh", "-c", "setsid sh -c 'sleep 0.3' & exit 0"),
        interval=0.05,
        timeout=1.0,
    )
    client = start_with_canary(daemon)
    client.wait_status("orphans", lambda s: s["total_checks"] >= 40, timeout=30)
    wait_for("no zombie child of the daemon", lambda: zombies_of(daemon.pid) == [], 3)
    assert daemon.terminate() == 0


def _cgroup2_mount() -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return fields[4]
    raise AssertionError("no cgroup2 mounted")


def test_a_reused_cgroup_holds_nothing_of_the_check_before(
    daemon: DaemonProc, shared: Path
) -> None:
    """Cgroups of finished commands are reused. Each run of the check (as nobody) first lists
    the processes in its cgroup, then leaves a setsid grandchild behind and exits 0: a run in
    a reused cgroup must find there no grandchild of any run before (each was killed, and
    the cgroup seen empty, before it was reused), and every grandchild is reaped."""
    pids, seen = shared / "pids", shared / "seen"
    script = (
        "cg=$(sed -n 's/^0:://p' /proc/self/cgroup)\n"
        f"echo \"$cg $(tr '\\n' ' ' < {_cgroup2_mount()}$cg/cgroup.procs)\" >> {seen}\n"
        f"before=$(wc -l < {pids} 2>/dev/null || echo 0)\n"
        f"setsid sh -c 'echo $$ >> {pids}; exec sleep 600' &\n"
        f'while [ "$(wc -l < {pids} 2>/dev/null || echo 0)" = "$before" ]; do sleep 0.01; done\n'
    )
    write(
        daemon,
        "leaver",
        "exec",
        command=("sh", "-c", script),
        interval=0.05,
        timeout=1.0,
        user="nobody",
    )
    client = start_with_canary(daemon)
    client.wait_status("leaver", lambda s: s["total_checks"] >= 8, timeout=20)
    runs = [line.split() for line in seen.read_text().splitlines()]
    cgroups = [run[0] for run in runs]
    assert len(set(cgroups)) < len(cgroups), f"no cgroup was reused: {cgroups}"
    grandchildren = _pids(pids)
    for cgroup, *listed in runs:
        left = set(grandchildren) & {int(pid) for pid in listed}
        assert not left, f"{cgroup} still held grandchildren {left} of an earlier run"
    wait_for(
        f"the setsid grandchildren {grandchildren} to be reaped",
        lambda: all(_reaped(pid) for pid in grandchildren),
        3,
    )
    assert zombies_of(daemon.pid) == []
    assert daemon.terminate() == 0


def test_what_a_restart_command_starts_is_left_running(daemon: DaemonProc, shared: Path) -> None:
    """Starting a service that outlives it is a restart command's job: not killed, and reaped
    once it dies of its own (the daemon adopted it)."""
    pids = shared / "pids"
    write(
        daemon,
        "down",
        "exec",
        command=("false",),
        retries=1,
        auto_restart=True,
        max_restarts=1,
        restart_command=("sh", "-c", f"setsid sh -c 'echo $$ >> {pids}; exec sleep 600' &"),
    )
    daemon.start()
    daemon.wait_event("restart_done")
    wait_for("the service's pid", lambda: _pids(pids), 5)
    (service,) = _pids(pids)
    daemon.wait_status("down", lambda s: s["total_checks"] >= 5)
    assert alive(service)
    os.kill(service, 9)
    wait_for(f"the service {service} to be reaped", lambda: _reaped(service), 3)
    assert daemon.terminate() == 0


def test_cgroup_per_command_off_is_said_and_a_setsid_grandchild_then_survives(
    daemon: DaemonProc, shared: Path
) -> None:
    """``security.cgroup_per_command: false`` (the default) saves the cgroup moves per command;
    the start says so, and then (only then) a ``setsid()`` grandchild outlives its check,
    adopted by the daemon (a subreaper all the same) and reaped when it ends."""
    pids = shared / "pids"
    write(daemon, "escape", "exec", command=_escaping(pids, "exit 0"), interval=30.0, retries=1)
    daemon.daemon_config.write_text("security:\n  cgroup_per_command: false\n")
    client = start_with_canary(daemon)
    (line,) = daemon.events("containment")
    assert 'cgroups="no: security.cgroup_per_command is false"' in line, line
    assert "subreaper=yes" in line.split()
    client.wait_status("escape", lambda s: s["total_checks"] >= 1)
    (grandchild,) = _pids(pids)
    ticks = Path(f"/proc/{grandchild}/stat").read_text().split()
    assert int(ticks[3]) == daemon.pid  # its parent died: the daemon adopted it
    os.kill(grandchild, 9)
    wait_for(f"{grandchild} to be reaped", lambda: _reaped(grandchild), 3)
    assert daemon.terminate() == 0
