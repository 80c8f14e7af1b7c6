"""Hostile or careless config against a root daemon: strict modes, the account an exec check runs
as, and what of the daemon's environment a check sees. Real daemons, real files given away
(chown to nobody, chmod g+w), real processes.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
from pathlib import Path

import pytest

from integration.harness import (
    MARK_VAR,
    DaemonProc,
    connect,
    pids_with,
    run_cli,
    wait_for,
    write,
)

NOBODY = pwd.getpwnam("nobody")
RELAX = "or set security.strict_modes: false in the daemon config"


@pytest.fixture(autouse=True)
def _root() -> None:
    """The daemon must be root to refuse, or to switch users: CI runs as root."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the security suite runs as root (CI runs as root)")
        pytest.skip("needs root")


def refusal(path: Path, reason: str) -> str:
    return (
        f"{path}: refused: healthd runs as root and will not run an exec check from a file "
        f"that others could change: {reason}, {RELAX}"
    )


def config_errors(daemon: DaemonProc) -> list[str]:
    return daemon.events("config_error")


def test_exec_check_from_a_file_another_user_owns_is_refused_plain_checks_still_run(
    daemon: DaemonProc,
) -> None:
    owned = write(daemon, "owned", "exec", command=("true",))
    os.chown(owned, NOBODY.pw_uid, NOBODY.pw_gid)
    plain = write(daemon, "plain", "tcp", host="127.0.0.1", port=9)  # nothing listens
    os.chown(plain, NOBODY.pw_uid, NOBODY.pw_gid)
    write(daemon, "mine", "exec", command=("true",))
    daemon.start()
    daemon.wait_status("mine", lambda s: s["healthy"])
    daemon.wait_status("plain", lambda s: s["total_fails"] >= 1)  # monitored all the same
    expected = refusal(
        owned, f"file {owned} is owned by uid {NOBODY.pw_uid}, not root; fix: chown root {owned}"
    )
    (line,) = daemon.wait_event("config_error")
    assert f'problem="{expected}"' in line
    assert daemon.status("owned") is None  # never run
    validate = run_cli(["validate", "--config-dir", str(daemon.config_dir)], daemon.env)
    assert (validate.returncode, validate.stdout) == (1, expected + "\n")
    relaxed = run_cli(
        ["validate", "--config-dir", str(daemon.config_dir), "--no-strict-modes"], daemon.env
    )
    assert relaxed.returncode == 0, relaxed.stdout


def test_group_writable_config_dir_refuses_commands_until_fixed_and_reloaded(
    daemon: DaemonProc,
) -> None:
    write(daemon, "job", "exec", command=("true",))
    write(daemon, "db", "tcp", host="127.0.0.1", port=9, restart_command=("true",))
    daemon.config_dir.chmod(0o775)
    daemon.start()
    where = daemon.config_dir
    fault = f"directory {where} is writable by group or others (mode 0775); fix: chmod go-w {where}"
    wait_for("two refusals", lambda: len(config_errors(daemon)) == 2 or None, 15.0)
    log = daemon.log()
    assert refusal(where / "job.yaml", fault) in log
    assert (
        f"{where / 'db.yaml'}: refused: healthd runs as root and will not run a restart command "
        f"from a file that others could change: {fault}, {RELAX}"
    ) in log
    daemon.config_dir.chmod(0o755)  # the fix the message gives

    def reloaded() -> list[str]:
        os.kill(daemon.pid, signal.SIGHUP)  # ignored until the daemon has started
        return daemon.events("config_reloaded")

    wait_for("a reload", reloaded, 15.0)
    daemon.wait_status("job", lambda s: s["healthy"])


def test_strict_modes_off_in_the_daemon_config_runs_them_and_says_so(daemon: DaemonProc) -> None:
    path = write(daemon, "job", "exec", command=("true",))
    path.chmod(0o666)
    daemon.daemon_config.write_text("security:\n  strict_modes: false\n")
    daemon.start()
    daemon.wait_status("job", lambda s: s["healthy"])
    assert len(daemon.events("strict_modes_off")) == 1
    assert config_errors(daemon) == []


def test_exec_check_sees_path_env_and_passed_names_only(daemon: DaemonProc, mark: str) -> None:
    daemon.env["HEALTHD_TEST_SECRET"] = "s3cret"  # in the daemon's environment, not passed
    daemon.env["LD_LIBRARY_PATH"] = "/tmp/evil"
    write(
        daemon,
        "env",
        "exec",
        command=("sh", "-c", "env | sort; exit 1"),
        env=(("PGUSER", "app"),),
    )
    daemon.start()
    status = daemon.wait_status("env", lambda s: s["total_fails"] >= 1)
    seen = status["last_error"].removeprefix("exec check failed: exit status 1: ").split("\n")
    assert seen == sorted(
        [
            f"{MARK_VAR}={mark}",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PGUSER=app",
            f"PWD={os.getcwd()}",  # set by sh itself
        ]
    )


def test_exec_check_runs_as_nobody_with_its_groups_and_leaves_nothing_behind(
    daemon: DaemonProc, mark: str
) -> None:
    group = grp.getgrgid(NOBODY.pw_gid).gr_name  # nogroup on Debian
    write(
        daemon,
        "asuser",
        "exec",
        command=("sh", "-c", "id; sleep 300 & exit 1"),
        user="nobody",
        timeout=2.0,
    )
    daemon.start()
    status = daemon.wait_status("asuser", lambda s: s["total_fails"] >= 2)
    assert status["last_error"] == (
        f"exec check failed: exit status 1: uid={NOBODY.pw_uid}(nobody) "
        f"gid={NOBODY.pw_gid}({group}) groups={NOBODY.pw_gid}({group})"
    )
    daemon.terminate()
    # the background sleep ran as nobody, in the check's group: killed with it
    assert pids_with(f"{MARK_VAR}={mark}", in_environ=True) == []


def test_unknown_user_is_a_config_error_naming_it(daemon: DaemonProc) -> None:
    path = write(daemon, "ok", "exec", command=("true",))
    bad = path.with_name("bad.yaml")
    bad.write_text("workload: bad\ntype: exec\ncommand: [true]\nuser: no-such-user-healthd\n")
    daemon.start()
    (line,) = daemon.wait_event("config_error")
    assert f"problem=\"{bad}:4: user: unknown user 'no-such-user-healthd'\"" in line
    daemon.wait_status("ok", lambda s: s["healthy"])


def test_env_values_stay_out_of_the_api(daemon: DaemonProc) -> None:
    write(daemon, "pg", "exec", command=("true",), env=(("PGPASSWORD", "s3cret-value"),))
    daemon.start()
    daemon.wait_status("pg", lambda s: s["healthy"])
    reply = connect(daemon).call("GET", "/v1/workloads")
    assert reply.status == 200
    (entry,) = reply.body["workloads"]
    assert (entry["command"], entry["env"]) == (["true"], ["PGPASSWORD"])
    assert "s3cret-value" not in reply.text
