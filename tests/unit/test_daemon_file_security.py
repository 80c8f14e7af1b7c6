"""The daemon config's ``security`` section: strict modes and the names passed to exec checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from healthd.config.daemon_file import SecuritySettings, parse_daemon_file
from healthd.errors import ConfigError

PATH = Path("/etc/volt/healthd.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_daemon_file(text, PATH)
    return [str(p) for p in caught.value.problems]


def test_defaults_are_strict_and_pass_nothing() -> None:
    assert parse_daemon_file("api: {}\n", PATH).security == SecuritySettings(True, ())


def test_security_keys() -> None:
    parsed = parse_daemon_file(
        "security:\n  strict_modes: false\n  pass_environment: [TZ, HEALTHD_ITEST_MARK]\n", PATH
    )
    assert parsed.security == SecuritySettings(False, ("TZ", "HEALTHD_ITEST_MARK"))
    assert not parsed.security.cgroup_per_command  # off unless asked for
    parsed = parse_daemon_file("security:\n  cgroup_per_command: true\n", PATH)
    assert parsed.security == SecuritySettings(True, (), cgroup_per_command=True)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # only the two words: "no" or "off" relaxing a security check by accident is refused
        (
            "security:\n  strict_modes: no\n",
            "2: security.strict_modes: expected true or false, got 'no'",
        ),
        (
            "security:\n  strict_modes: [false]\n",
            "2: security.strict_modes: expected a single value",
        ),
        (
            "security:\n  pass_environment: [TZ, 'A B']\n",
            "2: security.pass_environment: 'A B' is not an environment variable name",
        ),
        (
            "security:\n  pass_environment: TZ\n",
            "2: security.pass_environment: expected a list, e.g. [a, b]",
        ),
        (
            "security:\n  strict: false\n",
            "2: security.strict: unknown key "
            "(known: strict_modes, pass_environment, cgroup_per_command)",
        ),
    ],
)
def test_bad_security_values(text: str, problem: str) -> None:
    assert problems(text) == [f"{PATH}:{problem}"]
