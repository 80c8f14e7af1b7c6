"""The ``Workload`` schema of the OpenAPI document: a workload's effective config as GET
/v1/workloads answers it (``views.workload_entry``): the file's keys as they are written in YAML
(``WorkloadConfig.to_yaml_mapping``, each optional key only when set), check-kind defaults
filled in, secrets left out (``env`` and ``headers`` give names only), then a few of the
daemon's own (``*_seconds``, ``checks``).

Kept apart from ``openapi_schemas.py`` as it grows with every config key; the enums come from
the code that checks the keys, so that a new check kind or value cannot be left out.
"""

from __future__ import annotations

from typing import Any

from healthd.api.openapi_schemas import NAME, obj
from healthd.checks import KINDS
from healthd.checks.http_options import SCHEMES
from healthd.config.policy_keys import ON_EXHAUSTED

_TEXT = {"type": "string"}
_BOOL = {"type": "boolean"}
_DURATION = {"type": "string", "description": "a duration in Go's syntax: 250ms, 30s, 1m30s"}
_PATH = {"type": "string", "description": "an absolute path"}
_STRINGS = {"type": "array", "items": _TEXT}
_STATUS_ITEMS: list[dict[str, Any]] = [
    {"type": "integer", "minimum": 100, "maximum": 599},
    {"type": "string", "pattern": "^[1-5][0-9][0-9]-[1-5][0-9][0-9]$", "description": "a range"},
]


def _only(kinds: str, schema: dict[str, Any], what: str = "") -> dict[str, Any]:
    """``schema`` described as a key that only ``kinds`` checks take."""
    return {**schema, "description": f"{kinds} checks only{': ' if what else ''}{what}"}


WORKLOAD: dict[str, Any] = obj(
    {
        "workload": NAME,
        "type": {"type": "string", "enum": list(KINDS)},
        "target": _TEXT,
        "interval": _DURATION,
        "timeout": _DURATION,
        "retries": {"type": "integer"},
        "auto_restart": _BOOL,
        "max_restarts": {"type": "integer"},
        "restart_delay": _DURATION,
        "enabled": _BOOL,
        "interval_seconds": {"type": "number"},
        "timeout_seconds": {"type": "number"},
        "restart_delay_seconds": {"type": "number"},
        "checks": {"type": "string", "description": "what is checked: a URL, host:port, ..."},
    },
    {
        "port": {"type": "integer"},
        "host": _TEXT,
        "restart_command": _STRINGS,
        # -- exec --
        "command": _STRINGS,
        "user": _TEXT,
        "group": _TEXT,
        "env": _only("exec", _STRINGS, "the names; the values stay in the file"),
        "expect_output": _only("exec", _TEXT, "a substring the output must contain"),
        "expect_output_regex": _only(
            "exec", _TEXT, "a regular expression (RE2 syntax) the output must match"
        ),
        # -- http --
        "scheme": _only("http", {"type": "string", "enum": list(SCHEMES)}),
        "method": _only("http", _TEXT),
        "headers": _only("http", _STRINGS, "the names; the values stay in the file"),
        "expected_status": _only(
            "http",
            {"anyOf": [*_STATUS_ITEMS, {"type": "array", "items": {"anyOf": _STATUS_ITEMS}}]},
            'the healthy statuses: 200, "200-299" or a list of those',
        ),
        "body_contains": _only("http", _TEXT),
        "body_regex": _only("http", _TEXT, "a regular expression (RE2 syntax) the body must match"),
        "follow_redirects": _only("http", _BOOL),
        "tls_skip_verify": _only("https", _BOOL),
        "cert_expiry_warn": _only(
            "https", _DURATION, "cert_expiring when the certificate has less than this left"
        ),
        # TLS files, read by https and grpc (with tls) checks
        "ca_file": _only("https and grpc", _PATH, "PEM CA certificates"),
        "client_cert": _only("https and grpc", _PATH, "PEM client certificate"),
        "client_key": _only("https and grpc", _PATH, "PEM private key of client_cert"),
        "keep_alive": _only(
            "http and grpc", _BOOL, "keep the connection between checks (default: one per check)"
        ),
        # -- tcp --
        "send": _only("tcp", _TEXT, "written once connected"),
        "expect": _only("tcp", _TEXT, "a substring the peer must send"),
        # -- grpc --
        "service": _only("grpc", _TEXT, 'the service asked about; "": the whole server'),
        "tls": _only("grpc", _BOOL),
        # -- restart policies --
        "success_threshold": {"type": "integer", "minimum": 1},
        "start_period": _DURATION,
        "restart_backoff": _BOOL,
        "max_restart_delay": _DURATION,
        "backoff_reset": _DURATION,
        "restart_window": _DURATION,
        "on_exhausted": {"type": "string", "enum": list(ON_EXHAUSTED)},
        "flap_threshold": {"type": "integer", "minimum": 0},
        "flap_window": _DURATION,
        "depends_on": {"type": "array", "items": NAME},
    },
)
