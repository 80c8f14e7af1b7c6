"""The schemas of the OpenAPI document (``openapi.py``): the JSON bodies the API answers and
takes, as ``views.py`` builds them. The ``Workload`` schema, a workload's effective config, is
``openapi_workload.py``'s.

Written by hand; tests check every answer against them with schemathesis, and that every key
of a status or config is declared (tests/integration/test_api_fields.py).
"""

from __future__ import annotations

from typing import Any

from healthd.checks import KINDS
from healthd.model import EventType, State
from healthd.store.journal import MAX_UNSAVED

TIME = {"type": "string", "description": "RFC 3339; 0001-01-01T00:00:00Z when never set"}
NAME = {"type": "string"}
EVENT_TYPES = [t.value for t in EventType]
STATES = [s.value for s in State]
COUNT = {"type": "integer", "minimum": 0}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


NOTE = {
    "type": "string",
    "description": "what a healthy check saw that did not decide it, e.g. a body cut short",
}


SCHEMAS: dict[str, Any] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "status": {"type": "integer"},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                }
            )
        }
    ),
    "Status": obj(
        {
            "workload": NAME,
            "healthy": {"type": "boolean"},
            "last_check": TIME,
            "last_healthy": TIME,
            "consecutive_fails": {"type": "integer", "minimum": 0},
            "total_checks": {"type": "integer", "minimum": 0},
            "total_fails": {"type": "integer", "minimum": 0},
            "restart_count": {"type": "integer", "minimum": 0},
            "last_restart": TIME,
            "state": {"type": "string", "enum": [s.value for s in State]},
            "address": {"type": "string"},
            "address_source": {"type": "string"},
            "restart_failures": {"type": "integer", "minimum": 0},
            "paused": {"type": "boolean"},
            "monitored": {"type": "boolean"},
            # null: no config loaded for it (config_error: its file does not load)
            "type": nullable({"type": "string", "enum": [*KINDS, None]}),
            "auto_restart": {"type": "boolean"},
            "restart_budget_left": nullable({"type": "integer", "minimum": 0}),
            "next_restart_at": nullable(TIME),
            # restart policies (engine/policy.py), always given by the API
            "flapping": {"type": "boolean"},
            "restart_held": nullable(
                {"type": "string", "description": "why a due restart waits (a dependency, ...)"}
            ),
            "checks_stopped": {
                "type": "boolean",
                "description": "on_exhausted: stop, budget spent: not checked until a reset",
            },
            "restart_budget_frees_at": nullable(TIME),
            "current_restart_delay_seconds": nullable(
                {
                    "type": "number",
                    "minimum": 0,
                    "description": "what paces the next restart attempt (restart_backoff "
                    "grows it); null without auto_restart",
                }
            ),
        },
        {
            "last_error": {"type": "string"},
            "last_restart_error": {"type": "string"},
            "last_restart_attempt": TIME,
            "last_check_duration_seconds": {"type": "number", "minimum": 0},
            "last_check_note": NOTE,
            "paused_at": TIME,
            "paused_reason": {"type": "string"},
            # restart policies, in statuses.json only when they say something
            "consecutive_successes": COUNT,
            "starting_until": TIME,
            "restart_count_at_reset": {
                **COUNT,
                "description": "restart_count at the last reset; the budget counts from it",
            },
            "recent_restarts": {"type": "array", "items": TIME},
            "flapping_since": TIME,
            "verdict_changes": {"type": "array", "items": TIME},
        },
    ),
    "StatusList": obj(
        {
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "workloads": {"type": "array", "items": ref("Status")},
            "storage": ref("Storage"),
            "daemon": ref("About"),
        }
    ),
    "About": {
        **obj(
            {
                "host": {"type": "string"},
                "version": {"type": "string"},
                "started_at": TIME,
                "uptime_seconds": {"type": "number", "minimum": 0},
                "status": {
                    "type": "string",
                    "enum": ["starting", "ok", "behind", "stalled", "stopping"],
                },
                "on_time": {"type": "boolean", "description": "status is ok"},
                "overdue_seconds": {"type": "number", "minimum": 0},
            }
        ),
        "description": "Which daemon answers, since when, and whether checks run on time",
    },
    "Storage": {
        **obj(
            {
                "ok": {"type": "boolean", "description": "every file below is written fine"},
                "files": {"type": "array", "items": ref("StoredFile")},
            }
        ),
        "description": "Whether the daemon can write its files (a full disk); monitoring "
        "goes on either way, and failed writes are tried again.",
    },
    "StoredFile": obj(
        {
            "file": {"type": "string", "enum": ["statuses.json", "events.db"]},
            "path": {"type": "string"},
            "ok": {"type": "boolean"},
            "error": nullable({"type": "string", "description": "the latest failure"}),
            "failing_since": nullable(TIME),
            "failed_writes": {**COUNT, "description": "since the daemon started"},
            "last_ok": nullable(TIME),
        },
        {
            "unsaved_events": {
                **COUNT,
                "description": "events.db: events held in memory until the disk takes them",
            },
            "dropped_events": {
                **COUNT,
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
    "ConfigError": obj(
        {
            "file": {"type": "string"},
            "line": {"type": "integer", "minimum": 0},
            "field": {"type": "string"},
            "reason": {"type": "string"},
            "message": {"type": "string"},
        }
    ),
    "WorkloadList": obj(
        {
            "workloads": {"type": "array", "items": ref("Workload")},
            "config_errors": {"type": "array", "items": ref("ConfigError")},
        }
    ),
    "Histories": obj(
        {
            "histories": {"type": "array", "items": ref("History")},
            "unknown": {
                "type": "array",
                "items": NAME,
                "description": "names asked for that are not configured",
            },
        }
    ),
    "History": obj(
        {
            "workload": NAME,
            "results": {
                "type": "array",
                "items": obj(
                    {
                        "time": TIME,
                        "ok": {"type": "boolean"},
                        "duration_seconds": {"type": "number", "minimum": 0},
                        "error": {"type": "string"},
                    },
                    {"note": NOTE},
                ),
            },
        }
    ),
    "CheckResult": obj(
        {
            "workload": NAME,
            "ok": {"type": "boolean"},
            "duration_seconds": {"type": "number", "minimum": 0},
            "error": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in State]},
        },
        {"note": NOTE},
    ),
    "ReloadReport": obj(
        {
            "ok": {"type": "boolean"},
            "added": {"type": "array", "items": NAME},
            "removed": {"type": "array", "items": NAME},
            "changed": {"type": "array", "items": NAME},
            "kept": {"type": "array", "items": NAME},
            "unchanged": {"type": "integer", "minimum": 0},
            "config_errors": {"type": "array", "items": ref("ConfigError")},
        }
    ),
    "DaemonHealth": obj(
        {
            "status": {
                "type": "string",
                "enum": ["ok", "behind", "stalled", "starting", "stopping"],
            },
            "workloads": {"type": "integer"},
            "monitored": {"type": "integer"},
            "checks_total": {"type": "integer"},
            "scheduler": obj(
                {
                    "behind": {"type": "boolean"},
                    "overdue_seconds": {"type": "number"},
                    "busy": {"type": "integer"},
                    "queued": {"type": "integer"},
                }
            ),
            "started_at": TIME,
        }
    ),
    "PauseRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"reason": {"type": "string", "maxLength": 500}},
    },
    "Empty": {"type": "object", "additionalProperties": False, "properties": {}},
    "Index": obj(
        {
            "service": {"type": "string"},
            "endpoints": {"type": "array", "items": {"type": "string"}},
            "openapi": {"type": "string"},
        }
    ),
    "OpenApi": {"type": "object", "required": ["openapi", "info", "paths"]},
    "Event": obj(
        {
            "id": {"type": "integer", "minimum": 1, "description": "unique and increasing"},
            "type": {"type": "string", "enum": EVENT_TYPES},
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
            "state_from": nullable({"type": "string", "enum": STATES}),
            "state_to": {"type": "string", "enum": STATES},
        },
    ),
    "EventList": obj(
        {
            "events": {"type": "array", "items": ref("Event")},
            "last_id": {
                "type": "integer",
                "minimum": 0,
                "description": "pass as after_id for what comes next; nothing is skipped",
            },
        }
    ),
    "Sink": obj(
        {
            "name": NAME,
            "type": {"type": "string", "enum": ["webhook", "command", "alertmanager"]},
            "events": {"type": "array", "items": {"type": "string", "enum": EVENT_TYPES}},
            "workloads": nullable(
                {"type": "array", "items": NAME, "description": "null: every workload"}
            ),
            "pending": COUNT,
            "delivered": COUNT,
            "failed": COUNT,
            "expired": COUNT,
            "suppressed": COUNT,
            "last_error": {"type": "string"},
            "last_delivered": nullable({"type": "string", "description": "RFC 3339"}),
            "retries": {**COUNT, "description": "attempts to be made again, since the start"},
            "since_start": obj(
                {"delivered": COUNT, "failed": COUNT, "expired": COUNT, "suppressed": COUNT}
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
    "SinkList": obj({"sinks": {"type": "array", "items": ref("Sink")}}),
}
