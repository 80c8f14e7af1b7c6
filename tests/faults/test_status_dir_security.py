"""The status dir's files against another local user: links planted under their names, and
who may read what they hold.

The attacker is a real unprivileged process (uid 65534 through setpriv) planting real links in
a status dir it can write to; the daemon is the real one, running as root.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from healthd.store.state_files import status_dir_problem
from integration.harness import DaemonProc, run_cli, wait_for, write

NOBODY = 65534
ROOTS_CONTENT = b"root's own file: nobody may have root write here\n"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that any user may enter (pytest's own are root's, 0700)."""
    if os.geteuid() != 0:
        pytest.skip("planting as another user needs root")  # the suite runs as root in CI
    with tempfile.TemporaryDirectory(prefix="hd-state-", dir="/tmp") as directory:
        os.chmod(directory, 0o755)
        yield Path(directory)


@pytest.fixture
def as_nobody(
    require_binary: Callable[[str], str],
) -> Callable[..., subprocess.CompletedProcess[str]]:
    setpriv = require_binary("setpriv")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        switch = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return subprocess.run(
            [*switch, *argv],
            cwd="/",
            capture_output=True,
            text=True,
            errors="backslashreplace",  # cat of a database
            timeout=30,
            check=False,
        )

    return run


def attacker_status_dir(daemon: DaemonProc, shared_dir: Path) -> Path:
    """The daemon's status dir, owned by uid 65534: the attacker may create anything in it."""
    status = shared_dir / "status"
    status.mkdir(mode=0o755)
    os.chown(status, NOBODY, NOBODY)
    daemon.status_dir = status
    return status


def roots_target(shared_dir: Path, exists: bool) -> Path:
    """Where a planted link points: a file in a dir only root may enter (it exists, or not)."""
    private = shared_dir / "root-only"
    private.mkdir(mode=0o700, exist_ok=True)
    target = private / ("existing" if exists else "not-yet")
    if exists:
        target.write_bytes(ROOTS_CONTENT)
        target.chmod(0o600)
    return target


def assert_untouched(target: Path, exists: bool) -> None:
    if exists:
        assert target.read_bytes() == ROOTS_CONTENT
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    else:
        assert not target.exists(), "root created the file where the planted link points"


def journal_works(daemon: DaemonProc) -> None:
    """events.db is a file of the status dir again, and holds the daemon's events."""
    events = daemon.status_dir / "events.db"
    assert stat.S_ISREG(events.lstat().st_mode)
    run = run_cli(["events", "--status-dir", str(daemon.status_dir)], daemon.env)
    assert run.returncode == 0, run.stderr
    assert "daemon_started" in run.stdout


@pytest.mark.parametrize(
    ("name", "exists"),
    [
        ("events.db", False),
        ("events.db", True),
        ("events.db-wal", False),
        ("events.db-wal", True),
        ("events.db-shm", True),
    ],
)
def test_a_link_planted_as_the_journal_or_a_side_file_is_removed_not_followed(
    daemon: DaemonProc,
    shared_dir: Path,
    as_nobody: Callable[..., subprocess.CompletedProcess[str]],
    name: str,
    exists: bool,
) -> None:
    status = attacker_status_dir(daemon, shared_dir)
    target = roots_target(shared_dir, exists)
    planted = as_nobody("ln", "-s", str(target), str(status / name))
    assert planted.returncode == 0, planted.stderr
    assert (status / name).is_symlink()
    write(daemon, "job", "exec", target="true")
    daemon.start()
    daemon.wait_event("daemon_started")
    assert daemon.terminate() == 0  # daemon_started and daemon_stopping committed by then
    assert_untouched(target, exists)
    assert not (status / name).is_symlink()
    (line,) = daemon.events("state_file_link_removed")
    assert f"path={status / name}" in line
    assert f"points_to={target}" in line
    (warning,) = daemon.events("status_dir_unsafe")
    assert f"it belongs to uid {NOBODY}" in warning
    assert f"run: chown 0 {status}" in warning
    journal_works(daemon)


def test_a_link_planted_while_the_daemon_runs_is_not_followed_when_it_reopens(
    daemon: DaemonProc,
    shared_dir: Path,
    as_nobody: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """A directory planted as events.db keeps the journal in memory (the file cannot be
    opened); the daemon opens it again every second. The attacker swaps the directory for a
    link before it does: the reopen removes the link and moves the journal into a new file."""
    status = attacker_status_dir(daemon, shared_dir)
    target = roots_target(shared_dir, exists=False)
    assert as_nobody("mkdir", str(status / "events.db")).returncode == 0
    write(daemon, "job", "exec", target="true")
    daemon.start()
    daemon.wait_event("daemon_started")
    daemon.wait_event("event_journal_commit_failed")  # in memory, for now
    swap = as_nobody(
        "sh", "-c", 'rmdir "$1" && ln -s "$2" "$1"', "-", str(status / "events.db"), str(target)
    )
    assert swap.returncode == 0, swap.stderr
    wait_for(
        "a reopen of events.db",
        lambda: daemon.events("event_journal_on_disk") or target.exists(),
        15,
        daemon.log,
    )
    assert daemon.terminate() == 0
    assert_untouched(target, exists=False)
    (line,) = daemon.events("state_file_link_removed")
    assert f"path={status / 'events.db'}" in line
    journal_works(daemon)


STATE_FILES = ("statuses.json", "daemon.json", "events.db", "events.db-wal", "events.db-shm")


def modes(status: Path) -> dict[str, int]:
    return {n: stat.S_IMODE((status / n).stat().st_mode) for n in STATE_FILES}


def test_state_files_are_as_readable_as_the_api(
    daemon: DaemonProc,
    shared_dir: Path,
    as_nobody: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """Any local user may read the API on a loopback listener: the files are 0644. With only
    the Unix socket (0660, the daemon's group) they are 0640, and a file left looser by an
    earlier run is tightened at start; another user cannot read them, root's CLI still can."""
    daemon.status_dir = shared_dir / "status"
    write(daemon, "job", "exec", target="echo oops >&2; false", retries=1)

    daemon.start()
    daemon.wait_status("job", lambda s: s["state"] == "unhealthy")
    daemon.wait_event("daemon_started")
    while_running = modes(daemon.status_dir)
    read = as_nobody("cat", str(daemon.status_dir / "statuses.json"))
    assert daemon.terminate() == 0
    assert while_running == dict.fromkeys(STATE_FILES, 0o644)
    assert read.returncode == 0
    assert '"workload": "job"' in read.stdout

    # The same status dir, the TCP listener off, the Unix socket on; a file made looser.
    socket_path = shared_dir / "api.sock"
    daemon.daemon_config.write_text(f"api:\n  socket: {socket_path}\n")
    (daemon.status_dir / "statuses.json").chmod(0o666)
    since = len(daemon.log())
    daemon.start("--listen", "")
    daemon.wait_event("daemon_started", since)
    wait_for("the socket", socket_path.exists)
    while_running = modes(daemon.status_dir)
    refused = {n: as_nobody("cat", str(daemon.status_dir / n)) for n in STATE_FILES}
    status = run_cli(["status", "--status-dir", str(daemon.status_dir)], daemon.env)
    events = run_cli(["events", "--status-dir", str(daemon.status_dir)], daemon.env)
    assert daemon.terminate() == 0
    assert while_running == dict.fromkeys(STATE_FILES, 0o640)
    for name, run in refused.items():
        assert run.returncode != 0, (name, run.stdout)
        assert "Permission denied" in run.stderr, (name, run.stderr)
    assert "job" in status.stdout, status.stderr
    assert "unhealthy" in events.stdout, events.stderr
    after = {n: stat.S_IMODE((daemon.status_dir / n).stat().st_mode) for n in STATE_FILES[:3]}
    assert after == dict.fromkeys(STATE_FILES[:3], 0o640)


def test_a_status_dir_others_can_write_to_is_named_with_the_fix(tmp_path: Path) -> None:
    """A sticky dir writable by all (1777) still lets others plant names not yet taken, such
    as events.db-wal before the daemon starts: it is reported like a group-writable one."""
    status = tmp_path / "status"
    status.mkdir()
    for mode in (0o1777, 0o775, 0o757):
        status.chmod(mode)
        assert status_dir_problem(status) == (
            f"mode {mode:04o} lets group or others create files in it; run: chmod go-w {status}"
        )
    status.chmod(0o755)
    assert status_dir_problem(status) is None
