"""The OpenAPI 3 document of the API (GET /v1/openapi.json).

Written by hand next to the routes it describes; tests check every route against it with
schemathesis, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import functools
from typing import Any

from healthd import __version__
from healthd.engine.history import HISTORY_SIZE
from healthd.model import EventType, State
from healthd.store.journal import MAX_UNSAVED

_TIME = {"type": "string", "description": "RFC 3339; 0001-01-01T00:00:00Z when never set"}
_NAME = {"type": "string"}
# ``since`` as a duration back from now, in Go's syntax (1h, 30m, 1h30m, 1.5h): the API takes
# exactly this (and an RFC 3339 time), so every value the document allows is answered. At
# most three terms of five digits: no value can overflow Go's ~292 years.
_TERM = "[0-9]{1,5}(\\.[0-9]{1,6})?(ns|us|µs|μs|ms|s|m|h)"
SINCE_DURATION = f"^{_TERM}({_TERM}){{0,2}}$"
_EVENT_TYPES = [t.value for t in EventType]
_STATES = [s.value for s in State]
_COUNT = {"type": "integer", "minimum": 0}


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
            # restart policies (engine/policy.py)
            "flapping": {"type": "boolean"},
            "restart_held": _nullable(
                {"type": "string", "description": "why a due restart waits (a dependency, ...)"}
            ),
            "checks_stopped": {
                "type": "boolean",
                "description": "on_exhausted: stop, budget spent: not checked until a reset",
            },
            "restart_budget_frees_at": _nullable(_TIME),
            "current_restart_delay_seconds": _nullable(
                {
                    "type": "number",
                    "minimum": 0,
                    "description": "what paces the next restart attempt (restart_backoff "
                    "grows it); null without auto_restart",
                }
            ),
            "consecutive_successes": _COUNT,
            "starting_until": _TIME,
            "restart_count_at_reset": {
                **_COUNT,
                "description": "restart_count at the last reset; the budget counts from it",
            },
            "recent_restarts": {"type": "array", "items": _TIME},
            "flapping_since": _TIME,
            "verdict_changes": {"type": "array", "items": _TIME},
        },
    ),
    "StatusList": _object(
        {
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "workloads": {"type": "array", "items": _ref("Status")},
            "storage": _ref("Storage"),
        }
    ),
    "Storage": {
        **_object(
            {
                "ok": {"type": "boolean", "description": "every file below is written fine"},
                "files": {"type": "array", "items": _ref("StoredFile")},
            }
        ),
        "description": "Whether the daemon can write its files (a full disk); monitoring "
        "goes on either way, and failed writes are tried again.",
    },
    "StoredFile": _object(
        {
            "file": {"type": "string", "enum": ["statuses.json", "events.db"]},
            "path": {"type": "string"},
            "ok": {"type": "boolean"},
            "error": _nullable({"type": "string", "description": "the latest failure"}),
            "failing_since": _nullable(_TIME),
            "failed_writes": {**_COUNT, "description": "since the daemon started"},
            "last_ok": _nullable(_TIME),
        },
        {
            "unsaved_events": {
                **_COUNT,
                "description": "events.db: events held in memory until the disk takes them",
            },
            "dropped_events": {
                **_COUNT,
                "description": "events.db: events given up since the start, the oldest first, "
                f"when more than {MAX_UNSAVED:,} waited for the disk",
            },
            "in_memory_only": {
                "type": "boolean",
                "description": "events.db: the disk would not let it be opened at start; this "
                "run's events are kept in memory (delivered and shown as usual), not saved",
            },
        },
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
            "command": {"type": "array", "items": {"type": "string"}},
            "user": {"type": "string"},
            "group": {"type": "string"},
            # names only: the values stay in the file
            "env": {"type": "array", "items": {"type": "string"}},
            # restart policies
            "success_threshold": {"type": "integer", "minimum": 1},
            "start_period": {"type": "string"},
            "restart_backoff": {"type": "boolean"},
            "max_restart_delay": {"type": "string"},
            "backoff_reset": {"type": "string"},
            "restart_window": {"type": "string"},
            "on_exhausted": {"type": "string", "enum": ["keep_checking", "stop"]},
            "flap_threshold": {"type": "integer", "minimum": 0},
            "flap_window": {"type": "string"},
            "depends_on": {"type": "array", "items": _NAME},
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
    "Event": _object(
        {
            "id": {"type": "integer", "minimum": 1, "description": "unique and increasing"},
            "type": {"type": "string", "enum": _EVENT_TYPES},
            "workload": {"type": "string", "description": "empty for the daemon's own events"},
            "timestamp": {"type": "string", "description": "RFC 3339"},
            "message": {"type": "string"},
            "host": {"type": "string", "description": "the node name of the daemon's host"},
            "details": {
                "type": "object",
                "description": "check duration and error, restart attempt and outcome, ...",
            },
        },
        {
            "state_from": _nullable({"type": "string", "enum": _STATES}),
            "state_to": {"type": "string", "enum": _STATES},
        },
    ),
    "EventList": _object(
        {
            "events": {"type": "array", "items": _ref("Event")},
            "last_id": {
                "type": "integer",
                "minimum": 0,
                "description": "pass as after_id for what comes next; nothing is skipped",
            },
        }
    ),
    "Sink": _object(
        {
            "name": _NAME,
            "type": {"type": "string", "enum": ["webhook", "command", "alertmanager"]},
            "events": {"type": "array", "items": {"type": "string", "enum": _EVENT_TYPES}},
            "workloads": _nullable(
                {"type": "array", "items": _NAME, "description": "null: every workload"}
            ),
            "pending": _COUNT,
            "delivered": _COUNT,
            "failed": _COUNT,
            "expired": _COUNT,
            "suppressed": _COUNT,
            "last_error": {"type": "string"},
            "last_delivered": _nullable({"type": "string", "description": "RFC 3339"}),
            "retries": {**_COUNT, "description": "attempts to be made again, since the start"},
            "since_start": _object(
                {"delivered": _COUNT, "failed": _COUNT, "expired": _COUNT, "suppressed": _COUNT}
            ),
        },
        {
            "url": {
                "type": "string",
                "description": "webhook and alertmanager; without user, password and query",
            },
            "headers": {"type": "array", "items": {"type": "string"}, "description": "names"},
            "command": {"type": "string", "description": "command: the program it runs"},
        },
    ),
    "SinkList": _object({"sinks": {"type": "array", "items": _ref("Sink")}}),
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
    503: "healthd is starting or stopping (or keeps no event journal, or cannot read it now)",
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


def _query(name: str, schema: dict[str, Any], description: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
        **more,
    }


_AFTER_ID = _query(
    "after_id",
    {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "only events with a greater id",
)
_EVENT_WORKLOAD = _query(
    "workload", {"type": "string"}, "only this workload's events (empty: the daemon's own)"
)
_TYPE = _query(
    "type",
    {"type": "array", "items": {"type": "string", "enum": _EVENT_TYPES}},
    "only events of these types (the parameter repeated, or comma-separated)",
    style="form",
    explode=True,
)
_EVENTS_PARAMS = [
    _AFTER_ID,
    _EVENT_WORKLOAD,
    _TYPE,
    _query(
        "since",
        {
            "anyOf": [
                {"type": "string", "pattern": SINCE_DURATION},
                {"type": "string", "format": "date-time"},
            ]
        },
        "only events from this long ago on (a duration: 1h, 30m, 1h30m) or from this time "
        "(RFC 3339)",
    ),
    _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        "at most this many events",
    ),
]
_STREAM_PARAMS = [
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
        "description": "resume after this event (sent by EventSource when it reconnects); "
        "wins over after_id",
    },
    {**_AFTER_ID, "description": "replay the events after this id, then go on live"},
    _EVENT_WORKLOAD,
    _TYPE,
]
_STREAM_TEXT = """The journal's events as Server-Sent Events, as they are committed.

The stream starts with `retry: 2000`, then sends each event as `id: <id>`, `event: <type>`,
`data: <the Event JSON>` and a blank line, and a `: keepalive` comment every 15 s when quiet.
Without Last-Event-ID or after_id it starts with the next event; with one, the events
committed after that id are replayed first, then live ones follow, with no gap and no
duplicate. A client that reads too slowly is served from the journal instead of memory; one
that reads nothing is disconnected after the API's idle timeout and resumes with
Last-Event-ID. An id beyond the journal's newest (the journal was replaced) replays it all."""


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
            "/v1/workloads/{workload}/reset": {
                **workload,
                **_post(
                    "Restore the restart budget, backoff and flap history; check now",
                    "Status",
                    "Empty",
                    404,
                    409,
                ),
            },
            "/-/reload": _post("Re-read the config dir", "ReloadReport", "Empty"),
            "/v1/events": _get(
                "Events from the journal, oldest first",
                "EventList",
                400,
                parameters=_EVENTS_PARAMS,
            ),
            "/v1/events/stream": {
                "get": {
                    "summary": "Events as they happen (Server-Sent Events), resumable",
                    "description": _STREAM_TEXT,
                    "security": _BEARER,
                    "parameters": _STREAM_PARAMS,
                    "responses": {
                        "200": {
                            "description": "an endless text/event-stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/v1/sinks": _get("Where events are delivered, and how that goes", "SinkList"),
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
