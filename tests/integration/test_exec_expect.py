"""exec checks' expect_output / expect_output_regex with real commands and a real redis.

``redis-cli ping`` exits 0 whatever redis answers: only its output tells PONG from NOAUTH.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from healthd.checks import patterns, run_check
from healthd.config.loader import parse_text
from healthd.config.workload import WorkloadConfig

from .harness import DaemonProc, connect, write
from .redis_server import Redis, running_redis

PASSWORD = "s3cret-for-the-test"


def exec_cfg(
    target: str,
    *,
    expect_output: str | None = None,
    expect_output_regex: str | None = None,
    env: tuple[tuple[str, str], ...] | None = None,
) -> WorkloadConfig:
    return WorkloadConfig(
        workload="w",
        type="exec",
        target=target,
        timeout=10.0,
        expect_output=expect_output,
        expect_output_regex=(
            patterns.compile(expect_output_regex) if expect_output_regex is not None else None
        ),
        env=env,
    )


# -- substring ------------------------------------------------------------------------------------


async def test_substring_found_in_stdout_is_healthy() -> None:
    cfg = exec_cfg("printf '/tmp:5432 - accepting connections\\n'", expect_output="accepting")
    result = await run_check(cfg, "")
    assert result.ok, result.error


async def test_substring_found_in_stderr_is_healthy() -> None:
    result = await run_check(exec_cfg("echo ready >&2", expect_output="ready"), "")
    assert result.ok, result.error


async def test_exit_0_without_the_substring_is_unhealthy_with_the_output() -> None:
    cfg = exec_cfg("printf '/tmp:5432 - rejecting connections\\n'", expect_output="accepting")
    result = await run_check(cfg, "")
    assert not result.ok
    assert result.error == (
        "exec check failed: exit status 0, but the output does not contain 'accepting': "
        "'/tmp:5432 - rejecting connections\\n'"
    )


async def test_a_failing_exit_status_decides_even_when_the_output_matches() -> None:
    result = await run_check(exec_cfg("echo accepting; exit 3", expect_output="accepting"), "")
    assert not result.ok
    assert result.error == "exec check failed: exit status 3: accepting"


async def test_no_output_at_all_says_so() -> None:
    result = await run_check(exec_cfg("true", expect_output="PONG"), "")
    assert not result.ok
    assert (
        result.error == "exec check failed: exit status 0, but no output (it must contain 'PONG')"
    )


async def test_long_output_is_shown_cut_short() -> None:
    result = await run_check(exec_cfg("seq 1 2000", expect_output="nope"), "")
    assert not result.ok
    assert result.error.startswith(
        "exec check failed: exit status 0, but the output does not contain 'nope': '1\\n2\\n"
    )
    assert result.error.endswith("'...")
    assert len(result.error) < 400


async def test_only_the_captured_4_kib_are_searched() -> None:
    # the marker comes after 5000 bytes: past what is kept, so it is not seen
    result = await run_check(exec_cfg("seq 1 1200; echo MARKER", expect_output="MARKER"), "")
    assert not result.ok
    early = await run_check(exec_cfg("echo MARKER; seq 1 1200", expect_output="MARKER"), "")
    assert early.ok, early.error


# -- regex ----------------------------------------------------------------------------------------


async def test_regex_is_searched_anywhere_in_the_output() -> None:
    healthy = exec_cfg("echo 'uptime: 42 days'", expect_output_regex=r"uptime: \d+ days")
    result = await run_check(healthy, "")
    assert result.ok, result.error


async def test_regex_line_anchors_need_multiline_mode() -> None:
    output = "printf 'state: starting\\nstate: ok\\n'"
    whole = await run_check(exec_cfg(output, expect_output_regex=r"^state: ok$"), "")
    lines = await run_check(exec_cfg(output, expect_output_regex=r"(?m)^state: ok$"), "")
    assert not whole.ok  # ^ is the start of the whole output
    assert whole.error == (
        "exec check failed: exit status 0, but the output does not match '^state: ok$': "
        "'state: starting\\nstate: ok\\n'"
    )
    assert lines.ok, lines.error


async def test_regex_from_a_file_loads_as_written() -> None:
    text = "workload: w\ntype: exec\ntarget: echo 'v=12'\nexpect_output_regex: 'v=\\d{2}$'\n"
    cfg, problems = parse_text(text, "w.yaml", "w")
    assert problems == []
    assert cfg is not None
    assert cfg.expect_output_regex == patterns.compile("v=\\d{2}$")
    result = await run_check(cfg, "")
    assert result.ok, result.error


# -- redis-cli: exit status 0 whatever the answer -------------------------------------------------


@pytest.fixture
def locked_redis(
    require_binary: Callable[[str], str], tmp_path: Path, env: dict[str, str]
) -> Iterator[Redis]:
    require_binary("redis-cli")
    server = require_binary("redis-server")
    with running_redis(server, tmp_path / "redis", env, password=PASSWORD) as redis:
        yield redis


def redis_cli_cfg(redis: Redis, *, expect: str | None, password: str | None) -> WorkloadConfig:
    env = (("REDISCLI_AUTH", password),) if password else None
    return exec_cfg(f"redis-cli -h 127.0.0.1 -p {redis.port} ping", expect_output=expect, env=env)


async def test_redis_cli_exit_status_alone_misses_a_refusal(locked_redis: Redis) -> None:
    without = await run_check(redis_cli_cfg(locked_redis, expect=None, password=None), "")
    assert without.ok  # what this feature is for: redis refused, and exit status 0 says healthy
    refused = await run_check(redis_cli_cfg(locked_redis, expect="PONG", password=None), "")
    assert not refused.ok
    assert refused.error.startswith(
        "exec check failed: exit status 0, but the output does not contain 'PONG': 'NOAUTH"
    ), refused.error


async def test_redis_cli_with_the_password_answers_pong(locked_redis: Redis) -> None:
    result = await run_check(redis_cli_cfg(locked_redis, expect="PONG", password=PASSWORD), "")
    assert result.ok, result.error


def test_daemon_reports_the_output_mismatch(daemon: DaemonProc, locked_redis: Redis) -> None:
    ping = f"redis-cli -h 127.0.0.1 -p {locked_redis.port} ping"
    common = {"target": ping, "expect_output": "PONG", "retries": 1, "timeout": 5.0}
    write(daemon, "authed", "exec", **common, env=(("REDISCLI_AUTH", PASSWORD),))
    write(daemon, "anonymous", "exec", **common)
    daemon.start()
    api = connect(daemon)
    api.wait_status("authed", lambda s: s["state"] == "healthy")
    down = api.wait_status("anonymous", lambda s: s["state"] == "unhealthy")
    assert "does not contain 'PONG': 'NOAUTH Authentication required." in down["last_error"], down
