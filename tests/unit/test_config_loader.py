"""healthd.config.loader on single files: every bad file gives exact FILE:LINE problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from healthd.config.loader import load_file, parse_text
from healthd.config.workload import WorkloadConfig

DATA = Path(__file__).resolve().parent.parent / "data"
NAME_RULE = "use 1-128 characters from A-Z a-z 0-9 _ . @ -, starting with a letter or digit"
LONG_NAME = "a" * 129

# data file -> every problem it must produce, as (line, "field: reason" or "reason")
BAD_FILES: dict[str, list[tuple[int, str]]] = {
    "invalid-unknown-key": [(4, "intreval: unknown key (did you mean 'interval'?)")],
    "invalid-wrong-types": [
        (3, "port: expected an integer, got 'abc'"),
        (4, "retries: expected an integer, got 'x'"),
        (5, "auto_restart: expected true or false, got 'maybe'"),
    ],
    "invalid-bare-duration": [
        (
            4,
            "interval: invalid duration '30': missing unit "
            "(did you mean '30s'? units: ns, us, ms, s, m, h)",
        )
    ],
    "invalid-durations-not-positive": [
        (4, "interval: must be greater than zero"),
        (5, "timeout: must be greater than zero"),
        (6, "restart_delay: must be greater than zero"),
    ],
    "invalid-counts": [
        (4, "retries: must be at least 1"),
        (5, "max_restarts: must be 0 (unlimited) or more"),
    ],
    "invalid-check-type": [
        (2, "type: unknown check type 'icmp' (use one of: exec, grpc, http, tcp)")
    ],
    "invalid-tcp-no-port": [(1, "port: required for tcp checks")],
    "invalid-exec-no-target": [
        (
            1,
            "target: required for exec checks: the command to run with sh -c "
            "(or command: an argv list, run without a shell)",
        )
    ],
    "invalid-port-zero": [(3, "port: 0 is outside 1-65535")],
    "invalid-port-too-big": [(3, "port: 70000 is outside 1-65535")],
    # YAML 1.1 reads 53:53 as the base-60 integer 3233; the reference (yaml.v3) refuses it.
    "invalid-port-mapping": [(4, "port: expected an integer, got '53:53'")],
    "invalid-name-dash": [(1, f"workload: invalid workload name '-x': {NAME_RULE}")],
    "invalid-name-slash": [(1, f"workload: invalid workload name 'a/b': {NAME_RULE}")],
    # a value is quoted cut to 32 characters: the file may hold what its writer should not read
    "invalid-name-too-long": [
        (1, f"workload: invalid workload name '{LONG_NAME[:32]}'... (129 characters): {NAME_RULE}")
    ],
    "invalid-name-mismatch": [
        (
            1,
            "workload: 'web' differs from the file name "
            "(expected 'invalid-name-mismatch' in invalid-name-mismatch.yaml)",
        )
    ],
    "invalid-syntax": [(3, "YAML syntax error: mapping values are not allowed in this context")],
    "invalid-empty": [(1, "empty file: expected a mapping with workload and type")],
    "invalid-top-level-list": [(1, "expected a mapping of keys to values")],
    "invalid-duplicate-key": [(5, "interval: duplicate key (first set on line 4)")],
    "invalid-restart-command": [
        (
            5,
            "restart_command: expected a list of arguments, "
            "e.g. [systemctl, restart, 'app@{workload}']",
        )
    ],
    "invalid-http-target": [(3, "target: must be a URL path starting with '/', got 'healthz'")],
    # The aliases are never expanded: the field sees one list and says so.
    "invalid-alias-bomb": [(5, "port: expected a single value, got a list")],
    # exec checks: command, user, group, env
    "invalid-exec-both": [
        (4, "command: set either command (an argv list) or target (sh -c), not both")
    ],
    "invalid-exec-command-string": [
        (4, "command: expected a list of arguments, e.g. [pg_isready, -h, 127.0.0.1]")
    ],
    "invalid-exec-unknown-user": [(4, "user: unknown user 'no-such-user-healthd'")],
    "invalid-exec-unknown-group": [(5, "group: unknown group 'no-such-group-healthd'")],
    "invalid-exec-group-without-user": [
        (4, "group: set user as well: group only says which group the user runs with")
    ],
    "invalid-exec-user-id-range": [(4, "user: user id 4294967295 is out of range (0-4294967294)")],
    "invalid-exec-env-name": [
        (
            5,
            "env: invalid variable name '1PGHOST': use letters, digits and _, "
            "not starting with a digit",
        )
    ],
    "invalid-exec-env-list": [
        (4, "env: expected a mapping of variable names to values, e.g. {PGUSER: app}")
    ],
    "invalid-exec-keys-on-tcp": [
        (4, "command: only for exec checks (this is a tcp check)"),
        (5, "user: only for exec checks (this is a tcp check)"),
        (6, "env: only for exec checks (this is a tcp check)"),
    ],
    # exec cannot pass a NUL byte: it used to reach posix_spawn and crash the check
    "invalid-nul-byte": [(4, "target: must not contain a NUL byte")],
    # RE2 (linear time) refuses what needs backtracking, and Python's spellings it lacks
    "invalid-http-body-regex": [
        (
            5,
            "body_regex: invalid regular expression '\"(up|down)\": \\1': backreferences (\\1) "
            "are not supported (healthd uses RE2, which matches in linear time; match the text "
            "itself)",
        )
    ],
    "invalid-exec-output-regex": [
        (
            4,
            "expect_output_regex: invalid regular expression 'accepting connections\\Z': \\Z is "
            "not supported (healthd uses RE2, which matches in linear time; use \\z or $ for the "
            "end of the text)",
        )
    ],
    # it used to crash the tcp check (ValueError from getaddrinfo) and hang the http check
    "invalid-host-nul": [
        (4, "host: must be an address or host name without spaces or control characters")
    ],
}


def test_every_invalid_data_file_has_a_case() -> None:
    assert sorted(p.stem for p in DATA.glob("invalid-*.yaml")) == sorted(BAD_FILES)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_invalid_file_reports_exact_problems(name: str) -> None:
    path = DATA / f"{name}.yaml"
    cfg, problems = load_file(path)
    assert cfg is None
    assert [str(p) for p in problems] == [
        f"{path}:{line}: {text}" for line, text in BAD_FILES[name]
    ]


def test_alias_bomb_in_restart_command_is_not_expanded() -> None:
    text = (DATA / "invalid-alias-bomb.yaml").read_text().replace("port:", "restart_command:")
    cfg, problems = parse_text(text + "port: 1\n", "bomb.yaml", None)
    assert cfg is None
    assert [str(p) for p in problems] == [
        "bomb.yaml:5: restart_command: every argument must be a single string"
    ]


def test_tcp_without_port_hints_that_target_is_unused() -> None:
    cfg, problems = parse_text("workload: db\ntype: tcp\ntarget: db:5432\n", "db.yaml", "db")
    assert cfg is None
    assert [str(p) for p in problems] == [
        "db.yaml:1: port: required for tcp checks (target is not used by tcp checks)"
    ]


def test_missing_required_keys() -> None:
    cfg, problems = parse_text("port: 80\n", "x.yaml", None)
    assert cfg is None
    assert [str(p) for p in problems] == [
        "x.yaml:1: workload: required",
        "x.yaml:1: type: required",
    ]


def test_yaml_error_inside_quoted_scalar_names_its_line() -> None:
    cfg, problems = parse_text("workload: web\ntype: 'http\n", "web.yaml", "web")
    assert cfg is None
    assert [str(p) for p in problems] == [
        "web.yaml:3: YAML syntax error: while scanning a quoted scalar "
        "found unexpected end of stream"
    ]


def test_comment_only_file_is_empty() -> None:
    cfg, problems = parse_text("# nothing here\n", "web.yaml", "web")
    assert cfg is None
    assert [str(p) for p in problems] == [
        "web.yaml:1: empty file: expected a mapping with workload and type"
    ]


def test_name_of_128_characters_is_allowed() -> None:
    name = "a" * 128
    cfg, problems = parse_text(f"workload: {name}\ntype: tcp\nport: 1\n", "f.yaml", None)
    assert problems == []
    assert cfg is not None
    assert cfg.workload == name


def test_reference_written_http_config_loads_with_enabled_false() -> None:
    # gopkg.in/yaml.v3 output of the reference's Config: every key, in struct order.
    text = (
        "workload: web\ntype: http\ntarget: /healthz\nport: 8080\ninterval: 30s\ntimeout: 5s\n"
        "retries: 3\nauto_restart: false\nmax_restarts: 0\nrestart_delay: 10s\nenabled: false\n"
    )
    cfg, problems = parse_text(text, "web.yaml", "web")
    assert problems == []
    assert cfg == WorkloadConfig(
        workload="web",
        type="http",
        target="/healthz",
        port=8080,
        interval=30.0,
        timeout=5.0,
        retries=3,
        auto_restart=False,
        max_restarts=0,
        restart_delay=10.0,
        enabled=False,
        host=None,
        restart_command=None,
    )


def test_reference_written_tcp_config_with_empty_target_loads() -> None:
    text = (
        'workload: db\ntype: tcp\ntarget: ""\nport: 5432\ninterval: 1m0s\ntimeout: 2s\n'
        "retries: 5\nauto_restart: true\nmax_restarts: 3\nrestart_delay: 1m30s\nenabled: true\n"
    )
    cfg, problems = parse_text(text, "db.yaml", "db")
    assert problems == []
    assert cfg == WorkloadConfig(
        workload="db",
        type="tcp",
        target="",
        port=5432,
        interval=60.0,
        timeout=2.0,
        retries=5,
        auto_restart=True,
        max_restarts=3,
        restart_delay=90.0,
        enabled=True,
    )


def test_reference_written_exec_config_without_port_loads() -> None:
    text = (
        "workload: worker\ntype: exec\ntarget: pgrep -f worker\ninterval: 15s\ntimeout: 3s\n"
        "retries: 2\nauto_restart: false\nmax_restarts: 0\nrestart_delay: 10s\nenabled: true\n"
    )
    cfg, problems = parse_text(text, "worker.yaml", "worker")
    assert problems == []
    assert cfg is not None
    assert (cfg.type, cfg.target, cfg.port) == ("exec", "pgrep -f worker", 0)
    assert (cfg.interval, cfg.timeout, cfg.retries) == (15.0, 3.0, 2)


def test_missing_keys_take_defaults_and_enabled_defaults_to_true() -> None:
    cfg, problems = parse_text("workload: db\ntype: tcp\nport: 5432\n", "db.yaml", "db")
    assert problems == []
    assert cfg == WorkloadConfig(workload="db", type="tcp", port=5432)
    assert cfg.enabled is True
    assert (cfg.interval, cfg.timeout, cfg.retries, cfg.restart_delay) == (30.0, 5.0, 3, 10.0)
    assert (cfg.auto_restart, cfg.max_restarts, cfg.host, cfg.restart_command) == (
        False,
        0,
        None,
        None,
    )


def test_null_values_mean_not_set() -> None:
    text = (
        "workload: db\ntype: tcp\ntarget: ~\nport: 5432\ninterval: null\ntimeout:\n"
        "retries: ~\nauto_restart: null\nmax_restarts:\nrestart_delay: ~\nenabled: null\n"
        "host: null\nrestart_command: ~\n"
    )
    cfg, problems = parse_text(text, "db.yaml", "db")
    assert problems == []
    assert cfg == WorkloadConfig(workload="db", type="tcp", port=5432)


def test_extension_keys_host_and_restart_command() -> None:
    text = (
        "workload: api\ntype: http\nport: 9000\nhost: 10.0.0.7\n"
        "restart_command: [systemctl, restart, 'app@{workload}', '--{workload}-x']\n"
    )
    cfg, problems = parse_text(text, "api.yaml", "api")
    assert problems == []
    assert cfg is not None
    assert cfg.host == "10.0.0.7"
    assert cfg.restart_command == ("systemctl", "restart", "app@{workload}", "--{workload}-x")
    assert cfg.restart_argv() == ["systemctl", "restart", "app@api", "--api-x"]


def test_restart_argv_is_none_without_restart_command() -> None:
    assert WorkloadConfig(workload="api", type="tcp", port=1).restart_argv() is None


def test_http_defaults_filled_only_by_with_defaults() -> None:
    cfg, problems = parse_text("workload: web\ntype: http\n", "web.yaml", "web")
    assert problems == []
    assert cfg is not None
    assert (cfg.target, cfg.port) == ("", 0)
    assert (cfg.with_defaults().target, cfg.with_defaults().port) == ("/healthz", 8080)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("yes", True), ("no", False), ("on", True), ("off", False)],
)
def test_yaml_booleans(value: str, expected: bool) -> None:
    text = f"workload: db\ntype: tcp\nport: 1\nauto_restart: {value}\n"
    cfg, problems = parse_text(text, "db.yaml", "db")
    assert problems == []
    assert cfg is not None
    assert cfg.auto_restart is expected


def test_bool_words_the_reference_accepts() -> None:
    for word, expected in (("y", True), ("yes", True), ("on", True), ("n", False), ("off", False)):
        cfg, problems = parse_text(
            f"workload: w\ntype: tcp\nport: 1\nauto_restart: {word}\n", "w.yaml", "w"
        )
        assert problems == []
        assert cfg is not None
        assert cfg.auto_restart is expected
    _, problems = parse_text('workload: w\ntype: tcp\nport: 1\nenabled: "yes"\n', "w.yaml", "w")
    assert [str(p) for p in problems] == ["w.yaml:4: enabled: expected true or false, got 'yes'"]


def test_problems_never_quote_a_line_of_another_file_or_a_whole_value() -> None:
    """A file that is really some other file (a line of /etc/shadow parses as a key) or that
    holds a secret by mistake: its problems go to the log, events and the API, so an unknown
    key that is no key name is counted, not shown, and a value is cut to 32 characters."""
    shadow_line = "root:$y$j9T$Q2xHsaltsalt$hashhashhashhashhash:19700:0:99999:7:::"
    _, problems = parse_text(f"{shadow_line}\n", "w.yaml", "w")
    assert [str(p) for p in problems] == [
        # (YAML reads the last ":" as the key's end)
        f"w.yaml:1: unknown key: not a key name ({len(shadow_line) - 1} characters, not shown)"
    ]
    secret = "s3cr3t-" + "x" * 60
    _, problems = parse_text(f"workload: w\ntype: tcp\nport: {secret}\n", "w.yaml", "w")
    assert [str(p) for p in problems] == [
        f"w.yaml:3: port: expected an integer, got '{secret[:32]}'... (67 characters)"
    ]
    _, problems = parse_text("workload: w\ntype: tcp\nport: 1\nintervall: 5s\n", "w.yaml", "w")
    assert [str(p) for p in problems] == [
        "w.yaml:4: intervall: unknown key (did you mean 'interval'?)"
    ]
