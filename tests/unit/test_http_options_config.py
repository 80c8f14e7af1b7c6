"""The http check's keys in a workload file: what loads, what renders back, and every problem
reported at its FILE:LINE with a reason. TLS files are real files made by trustme."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from healthd.checks import patterns, tls
from healthd.config.editor import render
from healthd.config.loader import parse_text
from healthd.config.workload import WorkloadConfig

HEAD = "workload: w\ntype: http\n"  # keys below start on line 3


def load(text: str) -> WorkloadConfig:
    cfg, problems = parse_text(HEAD + text, "w.yaml", "w")
    assert [str(p) for p in problems] == []
    assert cfg is not None
    return cfg


def problems_of(text: str, head: str = HEAD) -> list[str]:
    cfg, problems = parse_text(head + text, "w.yaml", "w")
    assert cfg is None
    return [str(p) for p in problems]


def round_trips(cfg: WorkloadConfig) -> None:
    full = cfg.with_defaults()
    again, problems = parse_text(render(full), "w.yaml", "w")
    assert problems == []
    assert again == full


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    """A CA file, a client certificate with its key (apart and together), and others."""
    ca = trustme.CA()
    client = ca.issue_cert("probe@healthd")
    other = ca.issue_cert("other@healthd")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "client.pem",
        "key": tmp_path / "client.key",
        "both": tmp_path / "both.pem",
        "other_key": tmp_path / "other.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["both"]))
    other.private_key_pem.write_to_path(str(files["other_key"]))
    return files


# -- what loads ----------------------------------------------------------------------------------


def test_every_option_loads_and_renders_back_unchanged(pem: dict[str, Path]) -> None:
    cfg = load(
        "scheme: https\nmethod: POST\nheaders:\n  Host: app.test\n  X-Probe: healthd\n"
        'expected_status: ["200-299", 418]\nbody_contains: ok\nbody_regex: \'"db": *"up"\'\n'
        f"follow_redirects: true\nca_file: {pem['ca']}\nclient_cert: {pem['cert']}\n"
        f"client_key: {pem['key']}\ncert_expiry_warn: 336h\n"
    )
    assert cfg.scheme == "https"
    assert cfg.method == "POST"
    assert cfg.headers == (("Host", "app.test"), ("X-Probe", "healthd"))
    assert cfg.expected_status == ((200, 299), (418, 418))
    assert cfg.body_contains == "ok"
    assert cfg.body_regex == patterns.compile('"db": *"up"')
    assert cfg.follow_redirects is True
    assert (cfg.ca_file, cfg.client_cert, cfg.client_key) == (
        str(pem["ca"]),
        str(pem["cert"]),
        str(pem["key"]),
    )
    assert cfg.cert_expiry_warn == 336 * 3600
    assert cfg.with_defaults().port == 8443
    round_trips(cfg)
    mapping = cfg.to_yaml_mapping()
    assert mapping["expected_status"] == ["200-299", 418]
    assert mapping["ca_file"] == str(pem["ca"])
    assert mapping["cert_expiry_warn"] == "336h0m0s"


@pytest.mark.parametrize(
    ("text", "ranges", "rendered"),
    [
        ("200", ((200, 200),), 200),
        ('"200-299"', ((200, 299),), "200-299"),
        ("200-299", ((200, 299),), "200-299"),
        ("[200, 204]", ((200, 200), (204, 204)), [200, 204]),
        ('["200-299", 418]', ((200, 299), (418, 418)), ["200-299", 418]),
        ("[503]", ((503, 503),), 503),
    ],
)
def test_expected_status_forms(
    text: str, ranges: tuple[tuple[int, int], ...], rendered: object
) -> None:
    cfg = load(f"expected_status: {text}\n")
    assert cfg.expected_status == ranges
    assert cfg.to_yaml_mapping()["expected_status"] == rendered
    round_trips(cfg)


def test_a_reference_file_renders_without_the_new_keys() -> None:
    cfg = load("target: /healthz\nport: 8080\n")
    assert not {"scheme", "method", "headers", "expected_status"} & set(cfg.to_yaml_mapping())
    assert cfg.with_defaults().port == 8080


def test_a_key_in_the_certificate_file_needs_no_client_key(pem: dict[str, Path]) -> None:
    cfg = load(f"scheme: https\nclient_cert: {pem['both']}\n")
    assert cfg.client_key is None


# -- problems at their line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("scheme: ftp\n", "w.yaml:3: scheme: must be http or https, got 'ftp'"),
        ("method: get\n", "w.yaml:3: method: methods are case-sensitive: did you mean 'GET'?"),
        ('method: "GE T"\n', "w.yaml:3: method: 'GE T' is not an HTTP method"),
        ("method: CONNECT\n", "w.yaml:3: method: CONNECT opens a tunnel: it cannot be a "
         "health check"),
        ("headers: [a, b]\n", "w.yaml:3: headers: expected a mapping of header names to values, "
         "e.g. {X-Probe: healthd}"),
        ("headers:\n  X-A: 1\n  Bad Name: 2\n", "w.yaml:4: headers: invalid header name "
         "'Bad Name': use letters, digits and !#$%&'*+-.^_`|~"),
        ('headers: {X-A: "a\\r\\nX-Injected: 1"}\n', "w.yaml:3: headers: the value of X-A must "
         "be printable ASCII on one line"),
        ('headers: {X-A: "a\\0"}\n', "w.yaml:3: headers: the value of X-A must be printable "
         "ASCII on one line"),
        ("headers: {X-A: ~}\n", "w.yaml:3: headers: X-A: expected a single value (quote '' "
         "for an empty one)"),
        ("headers: {X-A: 1, x-a: 2}\n", "w.yaml:3: headers: x-a is set twice (header names "
         "are case-insensitive)"),
        ("headers: {Content-Length: 5}\n", "w.yaml:3: headers: Content-Length is set by "
         "healthd itself and cannot be configured"),
        ("headers: {Connection: close}\n", "w.yaml:3: headers: Connection is set by healthd "
         "itself and cannot be configured"),
        ("headers: {Host: 'a b'}\n", "w.yaml:3: headers: Host: 'a b' is not a host name with "
         "an optional :port"),
        ("headers: {Host: 'app.test:99999'}\n", "w.yaml:3: headers: Host: 'app.test:99999': "
         "Port out of range 0-65535"),
        ("expected_status: 700\n", "w.yaml:3: expected_status: '700' is not a status code "
         "(100-599) or a range of them such as \"200-299\""),
        ("expected_status: 299-200\n", "w.yaml:3: expected_status: '299-200': the range ends "
         "before it starts"),
        ("expected_status: 2xx\n", "w.yaml:3: expected_status: '2xx' is not a status code "
         "(100-599) or a range of them such as \"200-299\""),
        ("expected_status: []\n", "w.yaml:3: expected_status: expected at least one status "
         "code or range"),
        ("expected_status: [200, [204]]\n", "w.yaml:3: expected_status: expected status codes "
         "(200) or ranges (\"200-299\")"),
        ("body_contains: ''\n", "w.yaml:3: body_contains: must not be empty (every body "
         "contains it)"),
        ("body_regex: '(unclosed'\n", "w.yaml:3: body_regex: invalid regular expression "
         "'(unclosed': missing )"),
        ("body_regex: '(a)\\1'\n", "w.yaml:3: body_regex: invalid regular expression '(a)\\1': "
         "backreferences (\\1) are not supported (healthd uses RE2, which matches in linear "
         "time; match the text itself)"),
        ("body_regex: [a, b]\n", "w.yaml:3: body_regex: expected a single value, got a list"),
        ("body_regex: ''\n", "w.yaml:3: body_regex: must not be empty (it would match any "
         "body)"),
        ("follow_redirects: sometimes\n", "w.yaml:3: follow_redirects: expected true or false, "
         "got 'sometimes'"),
        ("scheme: https\ncert_expiry_warn: 14d\n", "w.yaml:4: cert_expiry_warn: invalid "
         "duration '14d': unknown unit 'd' (use ns, us, ms, s, m, h)"),
        ("scheme: https\ncert_expiry_warn: 0s\n", "w.yaml:4: cert_expiry_warn: must be greater "
         "than zero"),
        ("method: HEAD\nbody_contains: ok\n", "w.yaml:4: body_contains: a HEAD response has no "
         "body: use method GET"),
        ("ca_file: relative/ca.pem\nscheme: https\n", "w.yaml:3: ca_file: 'relative/ca.pem' "
         "must be an absolute path (the daemon's working directory is not yours)"),
        ("ca_file: /nonexistent/ca.pem\nscheme: https\n", "w.yaml:3: ca_file: cannot read "
         "/nonexistent/ca.pem: No such file or directory"),
        ("ca_file: /\nscheme: https\n", "w.yaml:3: ca_file: / is not a regular file"),
        ("ca_file: /dev/null\nscheme: https\n", "w.yaml:3: ca_file: /dev/null is not a "
         "regular file"),
    ],
)  # fmt: skip
def test_problems(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]


@pytest.mark.parametrize(
    "key",
    ["scheme: http", "method: GET", "headers: {A: b}", "expected_status: 200",
     "body_contains: ok", "body_regex: ok", "follow_redirects: true", "tls_skip_verify: true",
     "cert_expiry_warn: 1h"],
)  # fmt: skip
def test_http_keys_on_other_kinds_are_errors(key: str) -> None:
    name = key.split(":", 1)[0]
    head = "workload: w\ntype: tcp\nport: 5432\n"
    assert problems_of(f"{key}\n", head) == [
        f"w.yaml:4: {name}: only for http checks (this is a tcp check)"
    ]


@pytest.mark.parametrize(
    "key", ["tls_skip_verify: false", "cert_expiry_warn: 336h", "ca_file: CA", "client_cert: CERT"]
)
def test_https_keys_with_scheme_http_are_errors(key: str, pem: dict[str, Path]) -> None:
    key = key.replace("CA", str(pem["ca"])).replace("CERT", str(pem["both"]))
    name = key.split(":", 1)[0]
    for scheme in ("", "scheme: http\n"):
        problems = problems_of(f"{scheme}{key}\n")
        line = 4 if scheme else 3
        assert problems == [f"w.yaml:{line}: {name}: only for scheme: https (this check uses http)"]


def test_tls_file_problems(pem: dict[str, Path], tmp_path: Path) -> None:
    https = "scheme: https\n"
    assert problems_of(f"{https}client_key: {pem['key']}\n") == [
        "w.yaml:4: client_key: needs client_cert (the certificate the key belongs to)"
    ]
    assert problems_of(f"{https}client_cert: {pem['cert']}\nclient_key: {pem['other_key']}\n") == [
        f"w.yaml:4: client_cert: the key in {pem['other_key']} does not belong to the "
        f"certificate in {pem['cert']}"
    ]
    assert problems_of(f"{https}client_cert: {pem['cert']}\n") == [
        f"w.yaml:4: client_cert: {pem['cert']}: no certificate followed by its private key "
        "(pem lib); set client_key if the key is in another file"
    ]
    assert problems_of(f"{https}ca_file: {pem['ca']}\ntls_skip_verify: true\n") == [
        "w.yaml:4: ca_file: not used with tls_skip_verify: true (set one of the two)"
    ]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    [problem] = problems_of(f"{https}ca_file: {garbage}\n")
    assert problem.startswith(f"w.yaml:4: ca_file: {garbage} holds no usable CA certificate (")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    assert problems_of(f"{https}ca_file: {empty}\n") == [f"w.yaml:4: ca_file: {empty} is empty"]


def test_an_encrypted_client_key_is_refused(pem: dict[str, Path], tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pem["key"].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert problems_of(f"scheme: https\nclient_cert: {pem['cert']}\nclient_key: {encrypted}\n") == [
        f"w.yaml:4: client_cert: the key in {encrypted} is encrypted: healthd cannot ask for a "
        "passphrase"
    ]


def test_an_unreadable_ca_file(
    pem: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Through ``healthd validate``; as root without the capabilities that make root ignore
    permission bits (setpriv), as a daemon under systemd's CapabilityBoundingSet would run."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "w.yaml").write_text(f"{HEAD}scheme: https\nca_file: {pem['ca']}\n")
    pem["ca"].chmod(0)
    argv = [sys.executable, "-m", "healthd", "validate", "--config-dir", str(config_dir)]
    daemon_config = tmp_path / "healthd.yaml"
    daemon_config.write_text("# no settings\n")
    argv += ["--daemon-config", str(daemon_config)]
    if os.geteuid() == 0:
        shared = request.config.pluginmanager.get_plugin(
            str(Path(__file__).parents[1] / "conftest.py")
        )
        assert shared is not None
        setpriv = shared.require_binary("setpriv")
        argv = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        f"{config_dir}/w.yaml:4: ca_file: cannot read {pem['ca']}: Permission denied"
    ]


# -- the certificate expiry reader ------------------------------------------------------------


@pytest.mark.parametrize(
    "not_after",
    [
        dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.UTC),  # UTCTime
        dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC),  # the last UTCTime year
        dt.datetime(2050, 1, 1, 0, 0, 0, tzinfo=dt.UTC),  # GeneralizedTime from here on
        dt.datetime(2999, 1, 1, tzinfo=dt.UTC),
    ],
)
def test_not_after_agrees_with_cryptography(not_after: dt.datetime) -> None:
    leaf = trustme.CA().issue_cert("x.test", not_after=not_after)
    pem_bytes = leaf.cert_chain_pems[0].bytes()
    parsed = x509.load_pem_x509_certificate(pem_bytes)
    der = parsed.public_bytes(serialization.Encoding.DER)
    assert tls.not_after(der) == parsed.not_valid_after_utc.timestamp() == not_after.timestamp()


@pytest.mark.parametrize("cut", [0, 1, 10, 100, 300])
def test_not_after_of_garbage_is_none(cut: int) -> None:
    leaf = trustme.CA().issue_cert("x.test")
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert tls.not_after(der[:cut]) is None
    assert tls.not_after(b"\x30\x03\x02\x01\x00") is None


@pytest.mark.parametrize(
    ("header", "address", "name"),
    [
        (None, "10.0.0.5", "10.0.0.5"),
        ("app.test", "10.0.0.5", "app.test"),
        ("app.test:8443", "10.0.0.5", "app.test"),
        ("[::1]:8443", "10.0.0.5", "::1"),
        (None, "::1", "::1"),
    ],
)
def test_server_name(header: str | None, address: str, name: str) -> None:
    assert tls.server_name(header, address) == name
