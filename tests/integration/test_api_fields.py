"""Every key the API answers is in its OpenAPI document, with a type that fits.

schemathesis (test_api_schema.py) checks the answers against the document, but a key the
document does not list passes it unseen (the schemas allow more properties, as a client must
accept). Here the real daemon runs a workload of each kind with every config key set, and
each key of GET /v1/workloads and GET /v1/status must be declared, and each value fit its
declared type. Every config key must also be seen: a key added to the config and the document
but not here fails this test, so that it is added here too.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from pathlib import Path
from typing import Any

import trustme

from .harness import DaemonProc, Services, connect, free_port

# Python types of the JSON values for each OpenAPI type (bool is an int in Python: see fits).
_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
}


def fits(value: Any, schema: dict[str, Any]) -> bool:
    """``value`` fits ``schema``: the parts of OpenAPI 3.0 the document's bodies use."""
    if value is None:
        return bool(schema.get("nullable"))
    if "anyOf" in schema and not any(fits(value, s) for s in schema["anyOf"]):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    if kind is not None:
        if isinstance(value, bool) != (kind == "boolean"):
            return False
        if not isinstance(value, _TYPES[kind]):
            return False
    if kind == "array" and not all(fits(v, schema["items"]) for v in value):
        return False
    if "pattern" in schema and not re.search(schema["pattern"], value):
        return False
    if "minimum" in schema and value < schema["minimum"]:
        return False
    return not ("maximum" in schema and value > schema["maximum"])


def undeclared(entry: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``entry`` the schema does not declare, or whose value does not fit."""
    properties = schema["properties"]
    return {k: v for k, v in entry.items() if k not in properties or not fits(v, properties[k])}


def write_files(daemon: DaemonProc, tmp_path: Path, web_port: int) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("client.test")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    files = {
        "web": f"""
            type: http
            host: 127.0.0.1
            port: {web_port}
            method: POST
            headers: {{X-Probe: healthd, Authorization: "Bearer secret"}}
            expected_status: [200, "200-299"]
            body_contains: ok
            follow_redirects: true
            keep_alive: true
            restart_command: ["true"]
            auto_restart: true
            max_restarts: 3
            success_threshold: 2
            start_period: 1s
            restart_backoff: true
            max_restart_delay: 1m
            backoff_reset: 10m
            restart_window: 1h
            on_exhausted: stop
            flap_threshold: 4
            flap_window: 5m
            depends_on: [db]
            """,
        "secure": f"""
            type: http
            host: 127.0.0.1
            port: {free_port()}
            scheme: https
            body_regex: "^ok"
            ca_file: {ca_file}
            client_cert: {cert_file}
            client_key: {key_file}
            cert_expiry_warn: 336h
            """,
        "lax": f"""
            type: http
            host: 127.0.0.1
            port: {free_port()}
            scheme: https
            tls_skip_verify: true
            """,
        "db": f"""
            type: tcp
            host: 127.0.0.1
            port: {free_port()}
            send: "PING\\r\\n"
            expect: "+PONG"
            """,
        "job": f"""
            type: exec
            command: ["true"]
            user: {user}
            group: {group}
            env: {{TOKEN: secret}}
            expect_output: ok
            """,
        "script": """
            type: exec
            target: echo ok
            expect_output_regex: "^ok$"
            """,
        "rpc": f"""
            type: grpc
            host: 127.0.0.1
            port: {free_port()}
            service: shop.v1.Cart
            tls: true
            ca_file: {ca_file}
            """,
    }
    for name, text in files.items():
        body = "\n".join(line.strip() for line in text.strip().splitlines())
        (daemon.config_dir / f"{name}.yaml").write_text(f"workload: {name}\n{body}\n")


def test_every_key_answered_is_declared_with_its_type(
    daemon: DaemonProc, services: Services, tmp_path: Path
) -> None:
    web = services.start("http")
    write_files(daemon, tmp_path, web.port)
    daemon.start()
    api = connect(daemon)
    api.wait_status("script", lambda s: s["state"] == "healthy")
    schemas = api.get("/v1/openapi.json")["components"]["schemas"]

    body = api.get("/v1/workloads")
    assert body["config_errors"] == [], body["config_errors"]
    configs = {entry["workload"]: entry for entry in body["workloads"]}
    assert sorted(configs) == ["db", "job", "lax", "rpc", "script", "secure", "web"]
    for name, entry in configs.items():
        assert undeclared(entry, schemas["Workload"]) == {}, name
    assert configs["web"]["headers"] == ["X-Probe", "Authorization"]  # never the values
    assert configs["job"]["env"] == ["TOKEN"]
    seen = {key for entry in configs.values() for key in entry}
    assert set(schemas["Workload"]["properties"]) - seen == set()

    statuses = api.get("/v1/status")["workloads"]
    assert len(statuses) == len(configs)
    for entry in statuses:
        assert undeclared(entry, schemas["Status"]) == {}, entry["workload"]
        missing = set(schemas["Status"]["required"]) - set(entry)
        assert missing == set(), entry["workload"]
    assert daemon.terminate() == 0


def test_fits_tells_a_wrong_value_from_a_right_one() -> None:
    """The guard on the test above: ``fits`` refuses what the schemas do not allow."""
    status = {"anyOf": [{"type": "integer", "minimum": 100}, {"type": "array", "items": {}}]}
    assert fits(200, status)
    assert fits([200, "x"], status)
    assert not fits(99, status)
    assert not fits("200", status)
    assert not fits(True, {"type": "integer"})
    assert not fits(1, {"type": "boolean"})
    assert not fits(None, {"type": "string"})
    assert fits(None, {"type": "string", "nullable": True})
    assert not fits("tcp", {"type": "string", "enum": ["http"]})
    assert not fits(["a", 1], {"type": "array", "items": {"type": "string"}})
    assert not fits("1h", {"type": "string", "pattern": "^[0-9]+$"})
    assert not fits(600, {"type": "integer", "maximum": 599})
    assert undeclared({"workload": "a", "extra": 1}, {"properties": {"workload": {}}}) == {
        "extra": 1
    }
