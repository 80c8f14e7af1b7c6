"""bench.workloads: the files the bench writes are what healthd loads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trustme
import yaml
from bench.workloads import (
    SENTINELS,
    CheckTarget,
    WorkloadSpec,
    bench_specs,
    http_target,
    render,
    tcp_target,
    write_workloads,
)

from healthd.config.loader import load_dir


def test_render_http() -> None:
    spec = WorkloadSpec("wl00000", "http", http_target(18080), 1.0, 5.0, 3)
    assert render(spec) == (
        "workload: wl00000\n"
        "type: http\n"
        'target: "/healthz"\n'
        "port: 18080\n"
        "host: 127.0.0.1\n"
        "interval: 1s\n"
        "timeout: 5s\n"
        "retries: 3\n"
        "enabled: true\n"
    )


def test_render_tcp_target_is_the_port_as_a_string() -> None:
    text = render(WorkloadSpec("wl00001", "tcp", tcp_target(9000), 0.5, 2.0, 1))
    assert yaml.safe_load(text) == {
        "workload": "wl00001",
        "type": "tcp",
        "target": "9000",
        "port": 9000,
        "host": "127.0.0.1",
        "interval": "500ms",
        "timeout": "2s",
        "retries": 1,
        "enabled": True,
    }


def test_render_exec_quotes_the_command_and_has_no_address() -> None:
    command = "printf x >> '/tmp/a b/count' # not: a comment"
    data = yaml.safe_load(render(WorkloadSpec("s", "exec", CheckTarget(command), 1.0, 5.0, 3)))
    assert data["target"] == command
    assert "port" not in data
    assert "host" not in data


def test_render_https_is_http_with_scheme_and_ca_file() -> None:
    check = http_target(8443, ca_file="/run/bench/ca.pem")
    data = yaml.safe_load(render(WorkloadSpec("wl00000", "https", check, 1.0, 5.0, 3)))
    assert data["type"] == "http"
    assert data["scheme"] == "https"
    assert data["ca_file"] == "/run/bench/ca.pem"
    assert "tls_skip_verify" not in data  # verification stays on, as in production
    with pytest.raises(ValueError, match="needs a ca_file"):
        render(WorkloadSpec("wl00000", "https", http_target(8443), 1.0, 5.0, 3))


def test_render_refuses_an_address_check_without_address() -> None:
    with pytest.raises(ValueError, match="needs a port"):
        render(WorkloadSpec("x", "http", CheckTarget("/healthz"), 1.0, 5.0, 3))
    with pytest.raises(ValueError, match="unknown check kind"):
        render(WorkloadSpec("x", "grpc", CheckTarget("/"), 1.0, 5.0, 3))


def test_bench_specs_names_and_sentinels() -> None:
    specs = bench_specs(
        "tcp", 3, tcp_target(1000), tcp_target(2000), interval=1.0, timeout=5.0, retries=3
    )
    assert [s.name for s in specs] == ["wl00000", "wl00001", "wl00002", *SENTINELS]
    assert {s.check.port for s in specs[:3]} == {1000}
    assert {s.check.port for s in specs[3:]} == {2000}


def test_keep_alive_is_written_only_when_asked_and_only_for_http() -> None:
    default = render(WorkloadSpec("a", "http", http_target(80), 1.0, 5.0, 3))
    assert "keep_alive" not in default  # a healthd without the key still loads the file
    kept = yaml.safe_load(render(WorkloadSpec("a", "http", http_target(80), 1.0, 5.0, 3, True)))
    assert kept["keep_alive"] is True
    for kind, check in [("tcp", tcp_target(80)), ("exec", CheckTarget("true"))]:
        with pytest.raises(ValueError, match="keep_alive is for http and https"):
            render(WorkloadSpec("a", kind, check, 1.0, 5.0, 3, keep_alive=True))


@pytest.mark.parametrize(
    ("kind", "measured", "sentinel", "keep_alive"),
    [
        ("http", http_target(18080), http_target(18081), False),
        ("http", http_target(18080), http_target(18081), True),
        ("https", http_target(18443, ca_file="CA"), http_target(18444, ca_file="CA"), False),
        ("https", http_target(18443, ca_file="CA"), http_target(18444, ca_file="CA"), True),
        ("tcp", tcp_target(18080), tcp_target(18081), False),
        ("exec", CheckTarget("printf x >> /tmp/count"), CheckTarget("test -e /tmp/flag"), False),
    ],
)
def test_healthd_loads_every_file_as_written(
    tmp_path: Path, kind: str, measured: CheckTarget, sentinel: CheckTarget, keep_alive: bool
) -> None:
    if kind == "https":  # the loader reads the CA file: a real one, in place of "CA"
        ca = tmp_path / "ca.pem"
        trustme.CA().cert_pem.write_to_path(str(ca))
        measured = replace(measured, ca_file=str(ca))
        sentinel = replace(sentinel, ca_file=str(ca))
    specs = bench_specs(
        kind, 25, measured, sentinel, interval=0.25, timeout=2.0, retries=2, keep_alive=keep_alive
    )
    paths = write_workloads(tmp_path / "config", specs)
    assert [p.name for p in paths] == [f"{s.name}.yaml" for s in specs]

    loaded = load_dir(tmp_path / "config")
    assert loaded.problems == []
    assert sorted(loaded.configs) == sorted(s.name for s in specs)
    for spec in specs:
        cfg = loaded.configs[spec.name]
        assert cfg.type == ("http" if kind == "https" else kind)
        assert cfg.scheme == ("https" if kind == "https" else None)
        assert cfg.ca_file == spec.check.ca_file
        assert cfg.target == spec.check.target
        assert cfg.interval == 0.25
        assert cfg.timeout == 2.0
        assert cfg.retries == 2
        assert cfg.enabled
        assert cfg.keep_alive == (True if keep_alive else None)  # sentinels included
        if kind == "exec":
            assert cfg.host is None
        else:
            assert (cfg.host, cfg.port) == (spec.check.host, spec.check.port)
