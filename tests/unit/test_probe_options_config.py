"""Loading, validating and writing back the probe options: tcp send/expect, exec
expect_output(_regex), and the grpc kind's port, service, tls and certificate files."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from healthd.checks import patterns
from healthd.config.editor import render, write
from healthd.config.loader import parse_text
from healthd.config.workload import WorkloadConfig
from healthd.errors import ConfigError


def load(text: str) -> WorkloadConfig:
    cfg, problems = parse_text(text, "w.yaml", "w")
    assert [str(p) for p in problems] == []
    assert cfg is not None
    again, problems = parse_text(render(cfg), "w.yaml", "w")  # and it writes back the same
    assert problems == []
    assert again == cfg
    return cfg


def problems_of(text: str) -> list[str]:
    cfg, problems = parse_text(text, "w.yaml", "w")
    assert cfg is None
    return [str(p) for p in problems]


TCP = "workload: w\ntype: tcp\nport: 6379\n"
EXEC = "workload: w\ntype: exec\ntarget: redis-cli ping\n"
GRPC = "workload: w\ntype: grpc\nport: 50051\n"


# -- tcp send / expect ----------------------------------------------------------------------------


def test_send_and_expect_take_double_quoted_escapes() -> None:
    cfg = load(TCP + 'send: "PING\\r\\n"\nexpect: "+PONG"\n')
    assert (cfg.send, cfg.expect) == ("PING\r\n", "+PONG")
    assert 'send: "PING\\r\\n"' in render(cfg)


def test_expect_alone_is_a_banner_check() -> None:
    cfg = load(TCP + "expect: SSH-2.0-\n")
    assert (cfg.send, cfg.expect) == (None, "SSH-2.0-")


def test_binary_bytes_are_allowed() -> None:
    cfg = load(TCP + 'send: "\\0\\x01stats\\n"\nexpect: "\\x00ok"\n')
    assert cfg.send == "\0\x01stats\n"
    assert cfg.expect == "\0ok"


def test_a_reference_file_gets_none_of_the_new_keys() -> None:
    cfg = load(TCP)
    assert (cfg.send, cfg.expect) == (None, None)
    assert not {"send", "expect"} & set(cfg.to_yaml_mapping())


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (
            "send: PING\\r\\n\nexpect: +PONG\n",
            "w.yaml:4: send: \\r is two characters here, a backslash and 'r' (YAML keeps "
            "backslashes in plain and single-quoted values): write the value in double quotes "
            'for the control character, e.g. send: "PING\\r\\n"',
        ),
        (
            "send: 'PING\\n'\nexpect: +PONG\n",
            "w.yaml:4: send: \\n is two characters here, a backslash and 'n' (YAML keeps "
            "backslashes in plain and single-quoted values): write the value in double quotes "
            'for the control character, e.g. send: "PING\\r\\n"',
        ),
        (
            "expect: 220\\r\\n\n",
            "w.yaml:4: expect: \\r is two characters here, a backslash and 'r' (YAML keeps "
            "backslashes in plain and single-quoted values): write the value in double quotes "
            'for the control character, e.g. expect: "PING\\r\\n"',
        ),
        (
            'send: "PING\\r\\n"\n',
            "w.yaml:4: send: set expect as well: what the answer must contain (sending alone "
            "proves no more than the connect)",
        ),
        ("expect: ''\n", "w.yaml:4: expect: must not be empty"),
        ('send: ""\nexpect: x\n', "w.yaml:4: send: must not be empty"),
        ("expect: [a, b]\n", "w.yaml:4: expect: expected a single value, got a list"),
        (
            f"expect: {'x' * 4097}\n",
            "w.yaml:4: expect: longer than the 4096 bytes read for it: it could never match",
        ),
    ],
)
def test_bad_send_expect(lines: str, problem: str) -> None:
    assert problems_of(TCP + lines) == [problem]


def test_expect_of_exactly_the_read_cap_is_accepted() -> None:
    assert load(TCP + f"expect: {'x' * 4096}\n").expect == "x" * 4096


@pytest.mark.parametrize("kind", ["http", "exec", "grpc"])
def test_send_and_expect_are_tcp_only(kind: str) -> None:
    text = f"workload: w\ntype: {kind}\nport: 1\ntarget: /x\nsend: a\nexpect: b\n"
    assert problems_of(text) == [
        f"w.yaml:5: send: only for tcp checks (this is a {kind} check)",
        f"w.yaml:6: expect: only for tcp checks (this is a {kind} check)",
    ]


# -- exec expect_output ---------------------------------------------------------------------------


def test_expect_output_and_its_regex_load() -> None:
    assert load(EXEC + "expect_output: PONG\n").expect_output == "PONG"
    cfg = load(EXEC + "expect_output_regex: '(?m)^PONG$'\n")
    assert cfg.expect_output_regex == patterns.compile("(?m)^PONG$")


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (
            "expect_output_regex: 'a(b'\n",
            "w.yaml:4: expect_output_regex: invalid regular expression 'a(b': missing )",
        ),
        (
            "expect_output_regex: 'a{99999999999}'\n",
            "w.yaml:4: expect_output_regex: invalid regular expression 'a{99999999999}': "
            "{99999999999}: counts over 1000 are not supported (healthd uses RE2, which matches "
            "in linear time; use + or * instead)",
        ),
        (
            "expect_output_regex: 'ready(?=.*accepting)'\n",
            "w.yaml:4: expect_output_regex: invalid regular expression 'ready(?=.*accepting)': "
            "lookahead (?=...) is not supported (healthd uses RE2, which matches in linear time; "
            "match the text itself: a(?=b) finds what ab finds)",
        ),
        (
            f"expect_output_regex: '{'(' * 5000}{')' * 5000}'\n",
            f"w.yaml:4: expect_output_regex: invalid regular expression '{'(' * 40}'...: longer "
            "than 4096 characters",
        ),
        (
            "expect_output: PONG\nexpect_output_regex: PONG\n",
            "w.yaml:5: expect_output_regex: set expect_output (a substring) or "
            "expect_output_regex, not both",
        ),
        ("expect_output: ''\n", "w.yaml:4: expect_output: must not be empty"),
        ("expect_output_regex: ''\n", "w.yaml:4: expect_output_regex: must not be empty"),
    ],
)
def test_bad_expect_output(lines: str, problem: str) -> None:
    assert problems_of(EXEC + lines) == [problem]


@pytest.mark.parametrize("key", ["expect_output", "expect_output_regex"])
def test_expect_output_is_exec_only(key: str) -> None:
    assert problems_of(TCP + f"{key}: PONG\n") == [
        f"w.yaml:4: {key}: only for exec checks (this is a tcp check)"
    ]


# -- grpc -----------------------------------------------------------------------------------------


def test_grpc_needs_only_a_port() -> None:
    cfg = load(GRPC)
    assert (cfg.type, cfg.port, cfg.service, cfg.tls) == ("grpc", 50051, None, None)
    assert cfg.with_defaults() == cfg  # no defaults to fill


def test_grpc_service_and_tls_load() -> None:
    cfg = load(GRPC + "service: shop.v1.Cart\ntls: false\n")
    assert (cfg.service, cfg.tls) == ("shop.v1.Cart", False)
    assert load(GRPC + "service: ''\n").service == ""  # the whole server, said explicitly


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "workload: w\ntype: grpc\n",
            "w.yaml:1: port: required for grpc checks (gRPC has no standard port)",
        ),
        (
            GRPC + "target: shop.v1.Cart\n",
            "w.yaml:4: target: not used by grpc checks: the service to ask about is service "
            "(unset or '': the whole server)",
        ),
        (GRPC + 'service: "a\\tb"\n', "w.yaml:4: service: must not contain control characters"),
        (GRPC + "tls: maybe\n", "w.yaml:4: tls: expected true or false, got 'maybe'"),
        (GRPC + "service: [a]\n", "w.yaml:4: service: expected a single value, got a list"),
    ],
)
def test_bad_grpc(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]


@pytest.mark.parametrize("key", ["service", "tls"])
def test_grpc_keys_are_grpc_only(key: str) -> None:
    assert problems_of(TCP + f"{key}: true\n") == [
        f"w.yaml:4: {key}: only for grpc checks (this is a tcp check)"
    ]


@pytest.mark.parametrize("key", ["ca_file", "client_cert", "client_key"])
def test_certificate_files_are_for_grpc_and_http_only(key: str) -> None:
    assert problems_of(TCP + f"{key}: /etc/ssl/x.pem\n") == [
        f"w.yaml:4: {key}: only for grpc and http checks (this is a tcp check)"
    ]


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    client = ca.issue_cert("healthd-client")
    files = {
        "ca_file": ca.cert_pem.bytes(),
        "client_cert": client.cert_chain_pems[0].bytes(),
        "client_key": client.private_key_pem.bytes(),
    }
    paths = {}
    for key, data in files.items():
        paths[key] = tmp_path / f"{key}.pem"
        paths[key].write_bytes(data)
    return paths


def test_grpc_tls_files_load(pems: dict[str, Path]) -> None:
    lines = "".join(f"{key}: {path}\n" for key, path in pems.items())
    cfg = load(GRPC + "tls: true\n" + lines)
    assert (cfg.ca_file, cfg.client_cert, cfg.client_key) == tuple(str(p) for p in pems.values())


def test_grpc_tls_files_need_tls(pems: dict[str, Path]) -> None:
    assert problems_of(GRPC + f"ca_file: {pems['ca_file']}\n") == [
        "w.yaml:4: ca_file: set tls: true as well: without it the check does not use TLS"
    ]
    assert problems_of(GRPC + f"tls: false\nclient_key: {pems['client_key']}\n") == [
        "w.yaml:5: client_key: set tls: true as well: without it the check does not use TLS"
    ]


def test_a_client_certificate_needs_its_key(pems: dict[str, Path]) -> None:
    assert problems_of(GRPC + f"tls: true\nclient_cert: {pems['client_cert']}\n") == [
        "w.yaml:5: client_cert: set client_key as well: a client certificate needs both"
    ]
    assert problems_of(GRPC + f"tls: true\nclient_key: {pems['client_key']}\n") == [
        "w.yaml:5: client_key: set client_cert as well: a client certificate needs both"
    ]


def test_unusable_certificate_files(pems: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    assert problems_of(GRPC + f"tls: true\nca_file: {missing}\n") == [
        f"w.yaml:5: ca_file: cannot read {missing}: No such file or directory"
    ]
    assert problems_of(GRPC + "tls: true\nca_file: certs/ca.pem\n") == [
        "w.yaml:5: ca_file: 'certs/ca.pem' must be an absolute path (the daemon's working "
        "directory is not yours)"
    ]
    # the key where the certificate belongs, and the other way round
    swapped = f"tls: true\nclient_cert: {pems['client_key']}\nclient_key: {pems['client_cert']}\n"
    assert problems_of(GRPC + swapped) == [
        f"w.yaml:5: client_cert: {pems['client_key']} holds no PEM certificate "
        "(-----BEGIN ...CERTIFICATE-----)",
        f"w.yaml:6: client_key: {pems['client_cert']} holds no PEM private key "
        "(-----BEGIN ...PRIVATE KEY-----)",
    ]
    assert problems_of(GRPC + f"tls: true\nca_file: {tmp_path}\n") == [
        f"w.yaml:5: ca_file: cannot read {tmp_path}: Is a directory"
    ]


def test_nul_in_a_path_is_refused() -> None:
    assert problems_of(GRPC + 'tls: true\nca_file: "/a\\0b"\n') == [
        "w.yaml:5: ca_file: must not contain a NUL byte"
    ]


# -- written by healthd add (editor.write) --------------------------------------------------------


def test_editor_writes_the_new_keys_so_that_they_read_back(tmp_path: Path) -> None:
    cfgs = [
        WorkloadConfig(workload="r", type="tcp", port=6379, send="PING\r\n", expect="+PONG"),
        WorkloadConfig(workload="b", type="tcp", port=7, send="\0\x01", expect="\x00"),
        WorkloadConfig(
            workload="e", type="exec", target="x", expect_output_regex=patterns.compile(r"^\d+$")
        ),
        WorkloadConfig(workload="g", type="grpc", port=50051, service="a.B", tls=False),
    ]
    for cfg in cfgs:
        path, created = write(tmp_path, cfg)
        assert created
        loaded, problems = parse_text(path.read_text(), str(path), cfg.workload)
        assert problems == []
        assert loaded == cfg


def test_editor_refuses_what_would_not_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        write(tmp_path, WorkloadConfig(workload="g", type="grpc", port=1, target="/healthz"))
    assert "target: not used by grpc checks" in str(caught.value)
