"""Which exec targets run without a shell: only those sh would run exactly as written."""

from __future__ import annotations

import pytest

from healthd.checks.exec import direct_argv


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("true", ["true"]),
        ("  sleep   0.1 ", ["sleep", "0.1"]),
        ("ls -la /tmp", ["ls", "-la", "/tmp"]),
        ("cat --show-all=yes /etc/hostname", ["cat", "--show-all=yes", "/etc/hostname"]),
        ("sh -c exit", ["sh", "-c", "exit"]),
    ],
)
def test_plain_words_naming_a_program_run_directly(command: str, argv: list[str]) -> None:
    assert direct_argv(command) == argv


@pytest.mark.parametrize(
    "command",
    [
        "printf x >> /tmp/count",  # redirection
        "true && false",
        "true; false",
        "true | cat",
        "sleep 1 &",
        "echo $HOME",  # expansion
        "echo `id`",
        "ls *.yaml",  # glob
        "ls ~",  # tilde
        "ls 'a b'",  # quoting
        'ls "a b"',
        "ls a\\ b",
        "true # comment",
        "true\nfalse",
        "FOO=1 env",  # an assignment for sh
        "exit 3",  # shell words first
        "cd /tmp",
        "echo -e x",  # echo the builtin and echo the program disagree
        "test -e /tmp",
        "if true",
        "no-such-program-anywhere --flag",  # sh says "not found" as people expect
        "",
    ],
)
def test_anything_the_shell_would_interpret_goes_through_sh(command: str) -> None:
    assert direct_argv(command) is None
