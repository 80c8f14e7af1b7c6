"""The OpenAPI 3 document of the API (GET /v1/openapi.json).

Written by hand next to the routes it describes; tests check every route against it with
schemathesis, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import functools
from typing import Any

from healthd import __version__
from healthd.engine.history import HISTORY_SIZE
from healthd.model import State

_TIME = {"type": "string", "description": "RFC 3339; 0001-01-01T00:00:00Z when never set"}
_NAME = {"type": "string"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


_SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "status": {"type": "integer"},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                }
            )
        }
    ),
    "Status": _object(
        {
            "workload": _NAME,
            "healthy": {"type": "boolean"},
            "last_check": _TIME,
            "last_healthy": _TIME,
            "consecutive_fails": {"type": "integer", "minimum": 0},
            "total_checks": {"type": "integer", "minimum": 0},
            "total_fails": {"type": "integer", "minimum": 0},
            "restart_count": {"type": "integer", "minimum": 0},
            "last_restart": _TIME,
            "state": {"type": "string", "enum": [s.value for s in State]},
            "address": {"type": "string"},
            "address_source": {"type": "string"},
            "restart_failures": {"type": "integer", "minimum": 0},
            "paused": {"type": "boolean"},
            "monitored": {"type": "boolean"},
            "type": _nullable({"type": "string"}),
            "auto_restart": {"type": "boolean"},
            "restart_budget_left": _nullable({"type": "integer", "minimum": 0}),
            "next_restart_at": _nullable(_TIME),
        },
        {
            "last_error": {"type": "string"},
            "last_restart_error": {"type": "string"},
            "last_restart_attempt": _TIME,
            "last_check_duration_seconds": {"type": "number", "minimum": 0},
            "paused_at": _TIME,
            "paused_reason": {"type": "string"},
        },
    ),
    "StatusList": _object(
        {
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "workloads": {"type": "array", "items": _ref("Status")},
        }
    ),
    "ConfigError": _object(
        {
            "file": {"type": "string"},
            "line": {"type": "integer", "minimum": 0},
            "field": {"type": "string"},
            "reason": {"type": "string"},
            "message": {"type": "string"},
        }
    ),
    "Workload": _object(
        {
            "workload": _NAME,
            "type": {"type": "string"},
            "target": {"type": "string"},
            "interval": {"type": "string"},
            "timeout": {"type": "string"},
            "retries": {"type": "integer"},
            "auto_restart": {"type": "boolean"},
            "max_restarts": {"type": "integer"},
            "restart_delay": {"type": "string"},
            "enabled": {"type": "boolean"},
            "interval_seconds": {"type": "number"},
            "timeout_seconds": {"type": "number"},
            "restart_delay_seconds": {"type": "number"},
            "checks": {"type": "string"},
        },
        {
            "port": {"type": "integer"},
            "host": {"type": "string"},
            "restart_command": {"type": "array", "items": {"type": "string"}},
        },
    ),
    "WorkloadList": _object(
        {
            "workloads": {"type": "array", "items": _ref("Workload")},
            "config_errors": {"type": "array", "items": _ref("ConfigError")},
        }
    ),
    "History": _object(
        {
            "workload": _NAME,
            "results": {
                "type": "array",
                "items": _object(
                    {
                        "time": _TIME,
                        "ok": {"type": "boolean"},
                        "duration_seconds": {"type": "number", "minimum": 0},
                        "error": {"type": "string"},
                    }
                ),
            },
        }
    ),
    "CheckResult": _object(
        {
            "workload": _NAME,
            "ok": {"type": "boolean"},
            "duration_seconds": {"type": "number", "minimum": 0},
            "error": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in State]},
        }
    ),
    "ReloadReport": _object(
        {
            "ok": {"type": "boolean"},
            "added": {"type": "array", "items": _NAME},
            "removed": {"type": "array", "items": _NAME},
            "changed": {"type": "array", "items": _NAME},
            "kept": {"type": "array", "items": _NAME},
            "unchanged": {"type": "integer", "minimum": 0},
            "config_errors": {"type": "array", "items": _ref("ConfigError")},
        }
    ),
    "DaemonHealth": _object(
        {
            "status": {
                "type": "string",
                "enum": ["ok", "behind", "stalled", "starting", "stopping"],
            },
            "workloads": {"type": "integer"},
            "monitored": {"type": "integer"},
            "checks_total": {"type": "integer"},
            "scheduler": _object(
                {
                    "behind": {"type": "boolean"},
                    "overdue_seconds": {"type": "number"},
                    "busy": {"type": "integer"},
                    "queued": {"type": "integer"},
                }
            ),
            "started_at": _TIME,
        }
    ),
    "PauseRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"reason": {"type": "string", "maxLength": 500}},
    },
    "Empty": {"type": "object", "additionalProperties": False, "properties": {}},
    "Index": _object(
        {
            "service": {"type": "string"},
            "endpoints": {"type": "array", "items": {"type": "string"}},
            "openapi": {"type": "string"},
        }
    ),
    "OpenApi": {"type": "object", "required": ["openapi", "info", "paths"]},
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json("Error", _ERROR_TEXT[code]) for code in codes}


_ERROR_TEXT = {
    400: "bad request (malformed JSON, unknown field, bad parameter)",
    401: "a token is needed and was missing or wrong",
    403: "not allowed from here",
    404: "no such workload",
    409: "the workload is configured but not monitored (disabled, or its file is broken)",
    413: "the request body is too large",
    503: "healthd is starting or stopping",
    504: "no check result in time",
}
_WORKLOAD_PARAM = {
    "name": "workload",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {}]


def _get(summary: str, schema: str, *errors: int, **extra: Any) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            # Open on loopback and the Unix socket; the token on any other listener.
            "security": _BEARER,
            "responses": {"200": _json(schema, "OK"), **_errors(401, 503, *errors)},
            **extra,
        }
    }


def _post(summary: str, schema: str, body: str, *errors: int) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": _BEARER,
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _ref(body)}},
            },
            "responses": {
                "200": _json(schema, "OK"),
                **_errors(400, 401, 403, 413, 503, *errors),
            },
        }
    }


@functools.cache
def document() -> dict[str, Any]:
    workload = {"parameters": [_WORKLOAD_PARAM]}
    limit = {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": HISTORY_SIZE},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "healthd API",
            "version": __version__,
            "description": "Status, control and metrics of a running healthd daemon.",
        },
        "paths": {
            "/v1/status": _get("Every workload's status", "StatusList"),
            "/v1/status/{workload}": {**workload, **_get("One workload's status", "Status", 404)},
            "/v1/workloads": _get("Effective configs and config errors", "WorkloadList"),
            "/v1/workloads/{workload}/history": {
                **workload,
                **_get(
                    "The last check results, newest first", "History", 400, 404, parameters=[limit]
                ),
            },
            "/v1/workloads/{workload}/check": {
                **workload,
                **_post("Run the check now", "CheckResult", "Empty", 404, 409, 504),
            },
            "/v1/workloads/{workload}/pause": {
                **workload,
                **_post(
                    "Maintenance: checks go on, no restarts", "Status", "PauseRequest", 404, 409
                ),
            },
            "/v1/workloads/{workload}/resume": {
                **workload,
                **_post("End maintenance", "Status", "Empty", 404, 409),
            },
            "/-/reload": _post("Re-read the config dir", "ReloadReport", "Empty"),
            "/healthz": {
                "get": {
                    "summary": "The daemon itself: alive and on time",
                    "responses": {
                        "200": _json("DaemonHealth", "alive and on time"),
                        "503": _json("DaemonHealth", "starting, stopping, behind or stalled"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": _BEARER,
                    "responses": {
                        "200": {
                            "description": "Prometheus text format, or OpenMetrics when the "
                            "Accept header asks for application/openmetrics-text",
                            "content": {
                                "text/plain": {"schema": {"type": "string"}},
                                "application/openmetrics-text": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(401, 503),
                    },
                }
            },
            "/v1/openapi.json": _get("This document", "OpenApi"),
            "/": _get("What is here", "Index"),
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
