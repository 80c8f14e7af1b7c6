"""The API's Unix socket file against a user who can write in its directory: the socket's mode
is set as it is created, never by a later chmod of its path, which a symlink swapped in after
``bind`` would send to another file; and a symlink planted there before the start is refused,
its target untouched.

The race is made certain, not hoped for: the daemon runs under strace, which holds every
``bind`` for a few seconds after it has created the socket, and the attacker (uid 65534,
through setpriv) swaps a symlink in during that pause.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integration.harness import DaemonProc, wait_for

NOBODY = pwd.getpwnam("nobody")
BIND_PAUSE = "3s"  # long enough for the attacker's swap on a busy host


@pytest.fixture(autouse=True)
def _root() -> None:
    """The daemon must be root for the attack to matter, and to give the directory away."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the security suite runs as root (CI runs as root)")
        pytest.skip("needs root")


@pytest.fixture
def attacker_dir() -> Iterator[Path]:
    """A short directory (AF_UNIX paths are short) that uid 65534 owns, as a careless
    ``api.socket: /tmp/healthd/api.sock`` could give."""
    with tempfile.TemporaryDirectory(prefix="healthd-sock-", dir="/tmp") as directory:
        os.chown(directory, NOBODY.pw_uid, NOBODY.pw_gid)
        os.chmod(directory, 0o755)
        yield Path(directory)


def victim_file(tmp_path: Path) -> Path:
    victim = tmp_path / "root-secret"
    victim.write_text("root's own\n")
    victim.chmod(0o600)
    return victim


def socket_only(daemon: DaemonProc, path: Path) -> None:
    daemon.daemon_config.write_text(f'api:\n  listen: ""\n  socket: {path}\n')


def as_nobody(setpriv: str, code: str, *args: str) -> None:
    argv = [setpriv, f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]
    subprocess.run([*argv, "python3", "-c", code, *args], check=True, timeout=10)


# Replace the socket by a symlink to argv[2], atomically (rename over it), as uid 65534.
SWAP = """
import os, sys
path, target = sys.argv[1], sys.argv[2]
os.symlink(target, path + ".new")
os.rename(path + ".new", path)
"""


def bind_paused(strace: str) -> Callable[[list[str]], list[str]]:
    """argv -> the same under strace, every bind held for BIND_PAUSE once it has succeeded."""

    def wrap(argv: list[str]) -> list[str]:
        return [
            strace,
            *("-f", "-qq", "--seccomp-bpf", "-o", "/dev/null"),
            *("-e", "trace=bind", "-e", "signal=none"),
            *("-e", f"inject=bind:delay_exit={BIND_PAUSE}"),
            *argv,
        ]

    return wrap


def test_a_symlink_swapped_in_after_bind_does_not_get_the_sockets_mode(
    tmp_path: Path,
    daemon: DaemonProc,
    attacker_dir: Path,
    require_binary: Callable[[str], str],
) -> None:
    setpriv, strace = require_binary("setpriv"), require_binary("strace")
    victim = victim_file(tmp_path)
    path = attacker_dir / "api.sock"
    socket_only(daemon, path)
    daemon.wrap = bind_paused(strace)
    daemon.start()

    def bound() -> bool:
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, daemon.log()
        return path.exists() and stat.S_ISSOCK(path.lstat().st_mode)

    wait_for("the daemon to bind its socket", bound, timeout=20, detail=daemon.log)
    as_nobody(setpriv, SWAP, str(path), str(victim))  # within the pause after bind
    daemon.wait_event("api_listening", timeout=20)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600, "the victim was chmod-ed"
    assert victim.read_text() == "root's own\n"
    assert path.is_symlink()  # the attacker's link, left as it was


def test_a_symlink_planted_before_the_start_is_refused_and_its_target_untouched(
    tmp_path: Path,
    daemon: DaemonProc,
    attacker_dir: Path,
    require_binary: Callable[[str], str],
) -> None:
    setpriv = require_binary("setpriv")
    victim = victim_file(tmp_path)
    path = attacker_dir / "api.sock"
    as_nobody(setpriv, SWAP, str(path), str(victim))
    socket_only(daemon, path)
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == 2, daemon.log()
    assert f"{path} exists and is not a socket" in daemon.log()
    assert path.is_symlink()
    assert os.readlink(path) == str(victim)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_text() == "root's own\n"
