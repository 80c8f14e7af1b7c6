"""packaging/systemd/healthd.service: systemd's own verifier accepts it, and what it starts is
what healthd's defaults and command line say. Nothing is started: systemd-analyze verify
reads the unit offline (it checks every key and value, and that ExecStart is executable)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from healthd.cli import build_parser
from healthd.config.daemon import DEFAULT_CONFIG_DIR, DEFAULT_STATUS_DIR

UNIT = Path(__file__).parents[2] / "packaging" / "systemd" / "healthd.service"
INSTALLED = "/usr/local/bin/healthd"


def settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, in order, by key (comments and sections left out)."""
    found: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_systemd_analyze_verify_accepts_the_unit(
    tmp_path: Path, require_binary: Callable[[str], str]
) -> None:
    analyze = require_binary("systemd-analyze")
    # The same unit, with ExecStart pointing at this checkout's healthd (verify requires the
    # program to exist); the file name stays, as units are named by it.
    start = re.compile(f"^ExecStart={re.escape(INSTALLED)} ", re.MULTILINE)
    text, replaced = start.subn(f"ExecStart={sys.executable} -m healthd ", UNIT.read_text())
    assert replaced == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    about_ours = [line for line in done.stderr.splitlines() if UNIT.name in line]
    assert done.returncode == 0, done.stderr
    assert about_ours == [], done.stderr


def test_the_unit_is_a_notify_service_with_a_watchdog_and_reload() -> None:
    unit = settings()
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"]


def test_the_unit_lets_healthd_give_each_check_a_cgroup() -> None:
    """A read-only cgroup tree would leave checks contained by process group only: a setsid()
    grandchild would outlive its check (issue 16)."""
    unit = settings()
    assert unit["Delegate"] == ["yes"]
    assert "ProtectControlGroups" not in unit


def test_execstart_is_a_valid_command_line_on_the_default_dirs() -> None:
    unit = settings()
    (start,) = unit["ExecStart"]
    argv = shlex.split(start)
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on a bad option
    assert args.command == "run"
    assert args.config_dir == DEFAULT_CONFIG_DIR
    assert args.status_dir == DEFAULT_STATUS_DIR
    # the status dir is the state directory systemd makes, and the only writable path
    (state,) = unit["StateDirectory"]
    assert Path("/var/lib") / state == DEFAULT_STATUS_DIR
    assert "ReadWritePaths" not in unit
