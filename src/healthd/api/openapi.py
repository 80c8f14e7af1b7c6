"""The OpenAPI 3 document of the API (GET /v1/openapi.json).

Written by hand next to the routes it describes; tests check every route against it with
schemathesis, so the two cannot drift apart unnoticed. The paths and parameters are here, the
schemas of the bodies in ``openapi_schemas.py`` and ``openapi_workload.py``.
"""

from __future__ import annotations

import functools
from typing import Any

from healthd import __version__
from healthd.api.openapi_schemas import EVENT_TYPES, SCHEMAS, ref
from healthd.api.openapi_workload import WORKLOAD
from healthd.engine.history import HISTORY_SIZE

# ``since`` as a duration back from now, in Go's syntax (1h, 30m, 1h30m, 1.5h): the API takes
# exactly this (and an RFC 3339 time), so every value the document allows is answered. At
# most three terms of five digits: no value can overflow Go's ~292 years.
_TERM = "[0-9]{1,5}(\\.[0-9]{1,6})?(ns|us|µs|μs|ms|s|m|h)"
SINCE_DURATION = f"^{_TERM}({_TERM}){{0,2}}$"


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _error(code) for code in codes}


def _error(code: int) -> dict[str, Any]:
    answer = _json("Error", _ERROR_TEXT[code])
    if code == 429:
        seconds = {"type": "integer", "minimum": 1}
        answer["headers"] = {"Retry-After": {"schema": seconds, "description": "seconds"}}
    return answer


_ERROR_TEXT = {
    400: "bad request (malformed JSON, unknown field, bad parameter)",
    401: "a token is needed and was missing or wrong",
    403: "not allowed from here",
    404: "no such workload",
    409: "the workload is configured but not monitored (disabled, or its file is broken)",
    413: "the request body is too large",
    429: "too many expensive reads from this client (it waited a second for its turn); "
    "Retry-After says when to come back",
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


# What any route may answer on the TCP listener, before it is reached (api/hosts.py).
_HOST_ERRORS = {
    "400": _json("Error", "bad request (a malformed parameter or Host header)"),
    "421": _json(
        "Error",
        "the Host header names another server (a guard against DNS rebinding): use "
        "127.0.0.1, localhost or the listen address, or list the name in api.allowed_hosts",
    ),
}


def _with_host_errors(paths: dict[str, Any]) -> None:
    for operations in paths.values():
        for method, operation in operations.items():
            if method == "parameters":  # shared by the path's operations: not one of them
                continue
            responses = operation["responses"]
            for code, answer in _HOST_ERRORS.items():
                responses.setdefault(code, answer)


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
                "content": {"application/json": {"schema": ref(body)}},
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
    {"type": "array", "items": {"type": "string", "enum": EVENT_TYPES}},
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
    _query(
        "order",
        {"type": "string", "enum": ["oldest", "newest"], "default": "oldest"},
        "oldest: the first `limit` matching events; newest: the last `limit` of them (still "
        "in id order; last_id is then where a stream resumes without a gap)",
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
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "healthd API",
            "version": __version__,
            "description": "Status, control and metrics of a running healthd daemon.",
        },
        "paths": {
            "/v1/status": _get("Every workload's status", "StatusList", 429),
            "/v1/status/{workload}": {**workload, **_get("One workload's status", "Status", 404)},
            "/v1/workloads": _get("Effective configs and config errors", "WorkloadList", 429),
            "/v1/history": _get(
                "Several workloads' last check results at once",
                "Histories",
                400,
                429,
                parameters=[
                    _query(
                        "workload",
                        {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        "a workload, the parameter repeated for more (1 to 200)",
                        required=True,
                        style="form",
                        explode=True,
                    ),
                    limit,
                ],
            ),
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
                429,
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
            "/v1/sinks": _get("Where events are delivered, and how that goes", "SinkList", 429),
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
                        **_errors(401, 429, 503),
                    },
                }
            },
            "/v1/openapi.json": _get("This document", "OpenApi"),
            "/": {
                "get": {
                    "summary": "What is here: the status page for a browser (Accept: "
                    "text/html), else this index",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {"schema": ref("Index")},
                                "text/html": {"schema": {"type": "string"}},
                            },
                        },
                    },
                }
            },
        },
        "components": {
            "schemas": {**SCHEMAS, "Workload": WORKLOAD},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    _with_host_errors(doc["paths"])
    return doc
