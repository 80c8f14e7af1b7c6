"""healthd.config.daemon_file: the daemon config file and ``api.listen``, with exact problems."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from healthd.config.daemon_file import (
    DEFAULT_LISTEN,
    ApiSettings,
    DaemonFile,
    ListenAddress,
    ReloadSettings,
    load_daemon_file,
    parse_daemon_file,
    parse_listen,
)
from healthd.errors import ConfigError

PATH = Path("/etc/volt/healthd.yaml")
DEFAULT_ADDRESS = ListenAddress("127.0.0.1", 9780)


def problems(text: str) -> list[str]:
    """Every problem ``text`` has, as rendered for people (FILE:LINE: field: reason)."""
    with pytest.raises(ConfigError) as caught:
        parse_daemon_file(text, PATH)
    return [str(p) for p in caught.value.problems]


# -- parse_listen --------------------------------------------------------------------------------


def test_listen_host_and_port() -> None:
    address = parse_listen("127.0.0.1:9780")
    assert address == DEFAULT_ADDRESS
    assert address is not None
    assert address.is_loopback
    assert str(address) == "127.0.0.1:9780"


def test_listen_ipv6_in_brackets_is_loopback_and_prints_with_brackets() -> None:
    address = parse_listen("[::1]:9780")
    assert address == ListenAddress("::1", 9780)
    assert address is not None
    assert address.is_loopback
    assert str(address) == "[::1]:9780"


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("0.0.0.0:9780", False),
        ("[::]:9780", False),
        ("192.168.1.10:9780", False),
        ("example.com:9780", False),  # a host name may resolve to anything
        ("localhost:9780", True),
        ("127.0.0.2:9780", True),
    ],
)
def test_listen_is_loopback_only_for_loopback_addresses(text: str, loopback: bool) -> None:
    address = parse_listen(text)
    assert address is not None
    assert address.is_loopback is loopback


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_listen_turns_the_listener_off(text: str) -> None:
    assert parse_listen(text) is None


def test_listen_port_zero_asks_for_any_free_port() -> None:
    assert parse_listen("127.0.0.1:0") == ListenAddress("127.0.0.1", 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nohostport", "'nohostport': expected HOST:PORT, e.g. 127.0.0.1:9780"),
        (":9780", "':9780': expected HOST:PORT, e.g. 127.0.0.1:9780"),
        ("::1:80", "'::1:80': put an IPv6 address in brackets, e.g. [::1]:9780"),
        ("127.0.0.1:70000", "'127.0.0.1:70000': the port must be a number from 0 to 65535"),
        ("127.0.0.1:", "'127.0.0.1:': the port must be a number from 0 to 65535"),
        ("127.0.0.1:-1", "'127.0.0.1:-1': the port must be a number from 0 to 65535"),
        ("127.0.0.1:http", "'127.0.0.1:http': the port must be a number from 0 to 65535"),
        ("host :80", "'host :80': the host has spaces"),
    ],
)
def test_bad_listen_values_are_refused_with_the_fix(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_listen(text)


# -- parse_daemon_file: what a valid file gives ---------------------------------------------------


def test_empty_file_is_all_defaults() -> None:
    parsed = parse_daemon_file("", PATH)
    assert parsed == DaemonFile(path=PATH, api=ApiSettings(DEFAULT_ADDRESS, None, None))
    assert parse_listen(DEFAULT_LISTEN) == DEFAULT_ADDRESS


def test_comments_only_and_empty_api_are_all_defaults() -> None:
    assert parse_daemon_file("# nothing here\n", PATH).api == ApiSettings()
    assert parse_daemon_file("api:\n", PATH).api == ApiSettings()
    assert parse_daemon_file("api: {}\n", PATH).api == ApiSettings()


def test_every_api_setting_is_read() -> None:
    text = (
        "api:\n"
        "  listen: '[::1]:9781'\n"
        "  socket: /run/healthd.sock\n"
        "  token_file: /etc/volt/healthd.token\n"
    )
    parsed = parse_daemon_file(text, PATH)
    assert parsed.path == PATH
    assert parsed.api == ApiSettings(
        ListenAddress("::1", 9781), Path("/run/healthd.sock"), Path("/etc/volt/healthd.token")
    )


@pytest.mark.parametrize("value", ['""', "''", ""])
def test_empty_listen_in_the_file_turns_tcp_off(value: str) -> None:
    parsed = parse_daemon_file(f"api:\n  listen: {value}\n  socket: /run/h.sock\n", PATH)
    assert parsed.api.listen is None
    assert parsed.api.socket == Path("/run/h.sock")


def test_empty_socket_and_token_file_mean_not_set() -> None:
    parsed = parse_daemon_file("api:\n  socket: ''\n  token_file:\n", PATH)
    assert (parsed.api.socket, parsed.api.token_file) == (None, None)


# -- parse_daemon_file: problems ------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    assert problems("api: {}\nlisten: 127.0.0.1:1\n") == [
        f"{PATH}:2: listen: unknown key (known: api, events, sinks, security, reload)"
    ]


def test_unknown_api_key() -> None:
    assert problems("api:\n  listen: 127.0.0.1:1\n  port: 9780\n") == [
        f"{PATH}:3: api.port: unknown key (known: listen, socket, token_file, allowed_hosts, "
        "max_connections, max_connections_per_address, socket_max_connections, "
        "socket_max_connections_per_uid)"
    ]


def test_api_connection_budgets_and_allowed_hosts() -> None:
    text = (
        "api:\n  allowed_hosts: [health.internal, 10.0.0.5]\n  max_connections: 100\n"
        "  max_connections_per_address: 10\n  socket_max_connections: 20\n"
        "  socket_max_connections_per_uid: 4\n"
    )
    api = parse_daemon_file(text, PATH).api
    assert api.allowed_hosts == ("health.internal", "10.0.0.5")
    assert (api.max_connections, api.max_connections_per_address) == (100, 10)
    assert (api.socket_max_connections, api.socket_max_connections_per_uid) == (20, 4)
    assert problems("api:\n  max_connections: 0\n") == [
        f"{PATH}:2: api.max_connections: 0: must be from 1 to 100000"
    ]
    assert problems("api:\n  allowed_hosts: [evil.example:80]\n") == [
        f"{PATH}:2: api.allowed_hosts: 'evil.example:80' is not a host name or address "
        "(no port, no scheme)"
    ]


@pytest.mark.parametrize("value", ["5", "127.0.0.1:9780", "[a, b]"])
def test_api_must_be_a_mapping(value: str) -> None:
    assert problems(f"# daemon\napi: {value}\n") == [
        f"{PATH}:2: api: expected a mapping of keys to values"
    ]


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- api\n") == [f"{PATH}:1: expected a mapping of keys to values"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("nohostport", "'nohostport': expected HOST:PORT, e.g. 127.0.0.1:9780"),
        ("'::1:80'", "'::1:80': put an IPv6 address in brackets, e.g. [::1]:9780"),
        ("127.0.0.1:70000", "'127.0.0.1:70000': the port must be a number from 0 to 65535"),
        ("host :80", "'host :80': the host has spaces"),
        ("9780", "'9780': expected HOST:PORT, e.g. 127.0.0.1:9780"),
        ("[127.0.0.1, 9780]", "expected a single value"),
    ],
)
def test_bad_listen_values_in_the_file(value: str, reason: str) -> None:
    assert problems(f"api:\n\n  listen: {value}\n") == [f"{PATH}:3: api.listen: {reason}"]


@pytest.mark.parametrize("key", ["socket", "token_file"])
def test_relative_paths_are_refused(key: str) -> None:
    assert problems(f"api:\n  {key}: run/healthd.sock\n") == [
        f"{PATH}:2: api.{key}: 'run/healthd.sock': use an absolute path"
    ]


def test_duplicate_keys_are_refused_at_both_levels() -> None:
    assert problems("api:\n  listen: 127.0.0.1:1\napi: {}\n") == [f"{PATH}:3: api: duplicate key"]
    assert problems("api:\n  socket: /a.sock\n  socket: /b.sock\n") == [
        f"{PATH}:3: api.socket: duplicate key"
    ]


def test_every_problem_is_reported_at_once() -> None:
    found = problems("api:\n  listen: nohostport\n  socket: rel\n  bogus: 1\nextra: 2\n")
    assert sorted(found) == sorted(
        [
            f"{PATH}:2: api.listen: 'nohostport': expected HOST:PORT, e.g. 127.0.0.1:9780",
            f"{PATH}:3: api.socket: 'rel': use an absolute path",
            f"{PATH}:4: api.bogus: unknown key (known: listen, socket, token_file, "
            "allowed_hosts, max_connections, max_connections_per_address, "
            "socket_max_connections, socket_max_connections_per_uid)",
            f"{PATH}:5: extra: unknown key (known: api, events, sinks, security, reload)",
        ]
    )


def test_yaml_syntax_error_names_its_line() -> None:
    found = problems("api:\n  listen: 127.0.0.1:1\n  socket: [/run/h.sock\n")
    assert len(found) == 1
    assert found[0].startswith(f"{PATH}:4: YAML syntax error: ")
    assert "expected ',' or ']'" in found[0]


def test_yaml_bad_indentation_names_its_line() -> None:
    assert problems("api:\n listen: 127.0.0.1:1\n  socket: /x\n") == [
        f"{PATH}:3: YAML syntax error: mapping values are not allowed here"
    ]


# -- load_daemon_file -----------------------------------------------------------------------------


def test_missing_default_file_is_all_defaults(tmp_path: Path) -> None:
    loaded = load_daemon_file(tmp_path / "healthd.yaml", required=False)
    assert loaded == DaemonFile()
    assert loaded.path is None
    assert loaded.api.listen == DEFAULT_ADDRESS


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "healthd.yaml"
    with pytest.raises(ConfigError) as caught:
        load_daemon_file(path, required=True)
    assert str(caught.value) == f"{path}: daemon config file does not exist"


def test_existing_file_is_read_either_way(tmp_path: Path) -> None:
    path = tmp_path / "healthd.yaml"
    path.write_text("api:\n  listen: 127.0.0.1:9999\n")
    for required in (True, False):
        loaded = load_daemon_file(path, required=required)
        assert loaded.path == path
        assert loaded.api.listen == ListenAddress("127.0.0.1", 9999)


def test_problems_in_a_loaded_file_name_the_real_path(tmp_path: Path) -> None:
    path = tmp_path / "healthd.yaml"
    path.write_text("api:\n  listen: nohostport\n")
    with pytest.raises(ConfigError) as caught:
        load_daemon_file(path, required=False)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:2: api.listen: 'nohostport': expected HOST:PORT, e.g. 127.0.0.1:9780"
    ]


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "healthd.yaml"
    path.write_bytes(b"api:\n  listen: \xff\n")
    with pytest.raises(ConfigError) as caught:
        load_daemon_file(path, required=False)
    assert str(caught.value).startswith(f"{path}: cannot read: ")


# -- reload (config dir watching) --------------------------------------------------------------


def test_reload_defaults_to_watching_with_a_250ms_debounce() -> None:
    assert parse_daemon_file("", PATH).reload == ReloadSettings(watch=True, debounce=0.25)
    assert parse_daemon_file("reload:\n", PATH).reload == ReloadSettings()


def test_reload_settings_are_read() -> None:
    parsed = parse_daemon_file("reload:\n  watch: false\n  debounce: 1s\n", PATH)
    assert parsed.reload == ReloadSettings(watch=False, debounce=1.0)


def test_bad_reload_settings_name_their_line_and_the_fix() -> None:
    found = problems("reload:\n  watch: no\n  debounce: 10ms\n  poll: 1s\n")
    assert found == [
        f"{PATH}:2: reload.watch: expected true or false, got 'no'",
        f"{PATH}:3: reload.debounce: '10ms': must be from 50ms to 1m",
        f"{PATH}:4: reload.poll: unknown key (known: watch, debounce)",
    ]
    assert problems("reload:\n  debounce: 2m\n") == [
        f"{PATH}:2: reload.debounce: '2m': must be from 50ms to 1m"
    ]
    assert problems("reload:\n  debounce: 250\n") == [
        f"{PATH}:2: reload.debounce: invalid duration '250': missing unit (did you mean "
        "'250s'? units: ns, us, ms, s, m, h)"
    ]
