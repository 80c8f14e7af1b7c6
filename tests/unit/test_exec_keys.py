"""exec checks' command (argv, no shell), user/group and env: parsing, rendering, and what the
command really gets (real processes)."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
from pathlib import Path

import pytest

from healthd import accounts
from healthd.checks import KINDS, run_check
from healthd.checks.exec import DEFAULT_PATH, environment, pass_environment
from healthd.cli import main
from healthd.config.editor import render
from healthd.config.loader import load_file, parse_text
from healthd.config.workload import WorkloadConfig
from healthd.process import run_process


def requires_root() -> None:
    """Giving files and processes away needs root: skip locally, fail under CI=true."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("this test needs root (CI runs as root)")
        pytest.skip("needs root")


def load(text: str) -> WorkloadConfig:
    cfg, problems = parse_text(text, "w.yaml", "w")
    assert [str(p) for p in problems] == []
    assert cfg is not None
    return cfg


def problems_of(text: str) -> list[str]:
    cfg, problems = parse_text(text, "w.yaml", "w")
    assert cfg is None
    return [str(p) for p in problems]


def test_command_user_group_env_load_and_render_back_unchanged() -> None:
    cfg = load(
        "workload: w\ntype: exec\ncommand: [pg_isready, -h, 127.0.0.1, '$HOME']\n"
        "user: nobody\ngroup: nogroup\nenv:\n  PGCONNECT_TIMEOUT: 2\n  A_B: ''\n"
    )
    assert cfg.command == ("pg_isready", "-h", "127.0.0.1", "$HOME")
    assert (cfg.user, cfg.group, cfg.target) == ("nobody", "nogroup", "")
    assert cfg.env == (("PGCONNECT_TIMEOUT", "2"), ("A_B", ""))
    again, problems = parse_text(render(cfg), "w.yaml", "w")
    assert problems == []
    assert again == cfg


def test_a_reference_file_renders_without_the_new_keys() -> None:
    cfg = load("workload: w\ntype: exec\ntarget: pgrep -f worker\n")
    assert (cfg.command, cfg.user, cfg.group, cfg.env) == (None, None, None, None)
    assert not {"command", "user", "group", "env"} & set(cfg.to_yaml_mapping())


def test_numeric_ids_load() -> None:
    cfg = load("workload: w\ntype: exec\ncommand: [id]\nuser: 65534\ngroup: 65534\n")
    assert (cfg.user, cfg.group) == ("65534", "65534")


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ("{A: 1, A: 2}", "w.yaml:4: env: A is set twice"),
        ("{A: ~}", "w.yaml:4: env: A: expected a single value (quote '' for an empty one)"),
        ("{A: [1]}", "w.yaml:4: env: A: expected a single value (quote '' for an empty one)"),
        ('{A: "x\\0y"}', "w.yaml:4: env: A: must not contain a NUL byte"),
        (
            "{A-B: 1}",
            "w.yaml:4: env: invalid variable name 'A-B': use letters, digits and _, "
            "not starting with a digit",
        ),
    ],
)
def test_bad_env(env: str, problem: str) -> None:
    assert problems_of(f"workload: w\ntype: exec\ncommand: [id]\nenv: {env}\n") == [problem]


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("[]", "w.yaml:3: command: must name a program to run"),
        ("['']", "w.yaml:3: command: must name a program to run"),
        ("[id, ~]", "w.yaml:3: command: every argument must be a single string"),
        ('[id, "a\\0b"]', "w.yaml:3: command: an argument must not contain a NUL byte"),
    ],
)
def test_bad_command(command: str, problem: str) -> None:
    assert problems_of(f"workload: w\ntype: exec\ncommand: {command}\n") == [problem]


def test_nul_byte_in_restart_command_is_refused() -> None:
    text = 'workload: w\ntype: tcp\nport: 1\nrestart_command: [systemctl, "a\\0b"]\n'
    assert problems_of(text) == [
        "w.yaml:4: restart_command: an argument must not contain a NUL byte"
    ]


def test_neither_target_nor_command() -> None:
    assert problems_of("workload: w\ntype: exec\ntarget: ''\nuser: nobody\n") == [
        "w.yaml:3: target: required for exec checks: the command to run with sh -c "
        "(or command: an argv list, run without a shell)"
    ]


def test_bare_uid_needs_a_group() -> None:
    free = next(uid for uid in range(40000, 50000) if not _has_user(uid))
    assert problems_of(f"workload: w\ntype: exec\ncommand: [id]\nuser: {free}\n") == [
        f"w.yaml:4: user: uid {free} has no entry in the user database: set group as well"
    ]
    assert accounts.resolve(str(free), "65534") == accounts.Credentials(free, 65534, ())


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_describe_names_the_argv_and_the_account() -> None:
    cfg = load("workload: w\ntype: exec\ncommand: [pg_isready, -h, a b]\nuser: nobody\n")
    assert KINDS["exec"].describe(cfg, "") == "pg_isready -h 'a b' (as nobody)"
    cfg = load("workload: w\ntype: exec\ntarget: exit 0\nuser: nobody\ngroup: nogroup\n")
    assert KINDS["exec"].describe(cfg, "") == "sh -c 'exit 0' (as nobody:nogroup)"


def test_accounts_give_the_users_own_groups_never_the_daemons() -> None:
    nobody = pwd.getpwnam("nobody")
    creds = accounts.resolve("nobody", None)
    assert (creds.uid, creds.gid) == (nobody.pw_uid, nobody.pw_gid)
    assert creds.groups == tuple(os.getgrouplist("nobody", nobody.pw_gid))
    assert 0 not in creds.groups
    by_id = accounts.resolve(str(nobody.pw_uid), grp.getgrgid(0).gr_name)
    assert (by_id.uid, by_id.gid) == (nobody.pw_uid, 0)


def test_environment_is_path_passed_names_and_env_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHD_TEST_SECRET", "s3cret")
    monkeypatch.setenv("TZ", "UTC")
    cfg = load("workload: w\ntype: exec\ncommand: [id]\nenv: {A: '1'}\n")
    try:
        assert environment(cfg) == {"PATH": DEFAULT_PATH, "A": "1"}
        pass_environment(["TZ", "NOT_SET_ANYWHERE"])
        assert environment(cfg) == {"PATH": DEFAULT_PATH, "TZ": "UTC", "A": "1"}
        own_path = load("workload: w\ntype: exec\ncommand: [id]\nenv: {PATH: /opt/bin}\n")
        assert environment(own_path) == {"PATH": "/opt/bin", "TZ": "UTC"}
    finally:
        pass_environment([])


async def test_command_is_not_run_through_a_shell() -> None:
    cfg = load(
        "workload: w\ntype: exec\n"
        "command: [sh, -c, 'printf \"%s|\" \"$@\"; exit 1', sh, 'a b', '$HOME', '*', ';id']\n"
    )
    result = await run_check(cfg, "")
    assert result.error == "exec check failed: exit status 1: a b|$HOME|*|;id|"


async def test_the_command_sees_only_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEALTHD_TEST_SECRET", "s3cret")
    out = tmp_path / "env"
    cfg = load(f"workload: w\ntype: exec\ncommand: [sh, -c, 'env > {out}']\nenv: {{B: two}}\n")
    result = await run_check(cfg, "")
    assert result.ok, result.error
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines())
    seen.pop("PWD")  # sh sets it itself
    assert seen == {"PATH": DEFAULT_PATH, "B": "two"}


async def test_a_target_is_looked_up_on_the_checks_path_not_the_daemons(tmp_path: Path) -> None:
    program = tmp_path / "only-here"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    cfg = load("workload: w\ntype: exec\ntarget: only-here\n")
    failed = await run_check(cfg, "")
    assert failed.error == "exec check failed: exit status 127: sh: 1: only-here: not found"
    cfg = load(f"workload: w\ntype: exec\ntarget: only-here\nenv: {{PATH: '{tmp_path}'}}\n")
    # sh is not on that PATH either: the direct exec finds the program there
    assert (await run_check(cfg, "")).ok


async def test_runs_as_the_user_with_its_groups_only() -> None:
    requires_root()
    cfg = load("workload: w\ntype: exec\ncommand: [sh, -c, 'id; exit 1']\nuser: nobody\n")
    result = await run_check(cfg, "")
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    assert result.error == (
        f"exec check failed: exit status 1: uid={nobody.pw_uid}(nobody) "
        f"gid={nobody.pw_gid}({group}) groups={nobody.pw_gid}({group})"
    )


async def test_a_program_the_user_may_not_run_is_a_failed_check(tmp_path: Path) -> None:
    requires_root()
    program = tmp_path / "root-only"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o700)
    cfg = load(f"workload: w\ntype: exec\ncommand: [{program}]\nuser: nobody\n")
    result = await run_check(cfg, "")
    assert result.error == f"exec check failed: {program}: Permission denied"


def test_a_daemon_that_is_not_root_may_only_name_its_own_user() -> None:
    """In a real process that has given up root (forked, then nobody)."""
    requires_root()
    nobody = pwd.getpwnam("nobody")
    text = "workload: w\ntype: exec\ncommand: [sh, -c, 'id -u; exit 1']\nuser: {}\n"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            refused = parse_text(text.format("root"), "w.yaml", "w")[1]
            own = load(text.format("nobody"))
            result = asyncio.run(run_check(own, ""))
            report = {"refused": [str(p) for p in refused], "own": result.error}
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = json.loads(pipe.read() or "{}")
    assert os.waitpid(pid, 0)[1] == 0
    assert report == {
        "refused": [
            f"w.yaml:4: user: healthd runs as uid {nobody.pw_uid}, not root, "
            "so it cannot run checks as uid 0"
        ],
        # its own user: run as it is, no switch attempted (which would fail without root)
        "own": f"exec check failed: exit status 1: {nobody.pw_uid}",
    }


async def test_a_nul_byte_reaching_a_spawn_is_a_failed_run_not_a_crash() -> None:
    # Config refuses it; a command sink's argv or environment is not parsed by workload.py.
    outcome = await run_process(["true", "a\0b"], 5.0)
    assert (outcome.ok, outcome.spawn_error) == (False, "true: embedded null byte")
    outcome = await run_process(["true"], 5.0, env={"A": "x\0"})
    assert (outcome.ok, outcome.spawn_error) == (False, "true: embedded null byte")


def test_add_writes_command_user_group_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["add", "pg", "--config-dir", str(tmp_path), "--type", "exec"]
    extra = ["--command", "pg_isready -h '127.0.0.1'", "--user", "nobody", "--env", "A=x=y"]
    assert main([*args, *extra]) == 0
    cfg, problems = load_file(tmp_path / "pg.yaml")
    assert problems == []
    assert cfg is not None
    assert (cfg.command, cfg.user, cfg.group, cfg.env) == (
        ("pg_isready", "-h", "127.0.0.1"),
        "nobody",
        None,
        (("A", "x=y"),),
    )
    assert main([*args, "--command", "true", "--env", "A"]) == 2
    assert main([*args, "--command", "true", "--target", "true"]) == 1
    assert capsys.readouterr().err == (
        "healthd: --env: expected NAME=VALUE\n"
        "healthd: command: set either command (an argv list) or target (sh -c), not both\n"
    )
