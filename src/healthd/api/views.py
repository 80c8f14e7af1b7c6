"""What the API answers, as JSON-ready data: the daemon's state read, never changed, here."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from healthd import __version__
from healthd.checks import KINDS
from healthd.config.sinks import public_url, redact
from healthd.config.workload import WorkloadConfig
from healthd.engine.daemon import Daemon
from healthd.engine.history import Recorded
from healthd.engine.reload import ReloadReport
from healthd.errors import Problem
from healthd.model import CheckResult, State, WorkloadStatus
from healthd.store.health import WriteHealth
from healthd.store.journal import OUTCOMES, Journal, SinkCounts
from healthd.store.status import format_time, to_json

if TYPE_CHECKING:
    from healthd.sinks.notifier import Notifier

# The daemon is "stalled" when the earliest check is this late and its timer still has not
# fired: the loop runs (it answered) but the scheduler does not.
STALL_SECONDS = 5.0
# Workloads read and encoded between two yields to the loop when a whole list is built: about
# a millisecond of work, so that checks due meanwhile start on time.
SLICE = 100


def status_entry(daemon: Daemon, status: WorkloadStatus) -> dict[str, Any]:
    """statuses.json's entry, then what only the running daemon knows."""
    out = to_json(status)
    out["state"] = status.shown_state.value
    out["paused"] = status.paused
    runner = daemon.runners.get(status.workload)
    out["monitored"] = runner is not None
    cfg = daemon.configs.get(status.workload)
    out["type"] = cfg.type if cfg is not None else None
    out["flapping"] = status.flapping
    out["restart_held"] = status.restart_held or None
    out["checks_stopped"] = status.checks_stopped
    if runner is None:
        out["auto_restart"] = False
        out["restart_budget_left"] = None
        out["next_restart_at"] = None
        out["restart_budget_frees_at"] = None
        out["current_restart_delay_seconds"] = None
        return out
    policy = runner.policy
    out["auto_restart"] = policy.settings.auto_restart
    out["restart_budget_left"] = policy.budget_left()
    due = policy.next_restart_at()
    restarts = policy.settings.auto_restart
    out["next_restart_at"] = _from_monotonic(daemon, due) if restarts else None
    out["restart_budget_frees_at"] = _from_monotonic(daemon, policy.budget_frees_at())
    out["current_restart_delay_seconds"] = policy.restart_delay_now() if restarts else None
    return out


def _from_monotonic(daemon: Daemon, when: float | None) -> str | None:
    """A time on the daemon's monotonic clock as RFC 3339 (now when it has passed)."""
    if when is None:
        return None
    wait = when - daemon.clock.monotonic()
    return format_time(datetime.fromtimestamp(time.time() + max(0.0, wait), UTC))


def _counts(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    return counts


_dumps = functools.partial(json.dumps, ensure_ascii=False)


def encode_object(fields: list[tuple[str, str]]) -> bytes:
    """``{"key": value, ...}`` and a newline from values already encoded: the very bytes
    ``json_response`` gives for the same object (compact, key order kept)."""
    inner = ", ".join(f"{_dumps(key)}: {value}" for key, value in fields)
    return ("{" + inner + "}\n").encode()


async def encode_list(
    names: list[str], entry: Callable[[str], dict[str, Any] | None], seen: list[dict[str, Any]]
) -> str:
    """The JSON list of ``entry(name)`` for each name (None: left out, gone meanwhile), built
    and encoded ``SLICE`` at a time with the loop free in between. Each entry is read at
    once; entries may be some milliseconds apart. The entries go into ``seen`` too."""
    parts = []
    for start in range(0, len(names), SLICE):
        chunk = [e for n in names[start : start + SLICE] if (e := entry(n)) is not None]
        if chunk:
            parts.append(_dumps(chunk)[1:-1])
            seen.extend(chunk)
        await asyncio.sleep(0)
    return "[" + ", ".join(parts) + "]"


async def encode_all_statuses(daemon: Daemon) -> bytes:
    """GET /v1/status: ``counts`` per state, every workload's ``status_entry``, ``storage``
    and ``daemon`` (``about``), encoded without holding the loop for the whole list."""

    def entry(name: str) -> dict[str, Any] | None:
        status = daemon.statuses.get(name)
        return status_entry(daemon, status) if status is not None else None

    entries: list[dict[str, Any]] = []
    listed = await encode_list(sorted(daemon.statuses), entry, entries)
    return encode_object(
        [
            ("counts", _dumps(_counts(entries))),
            ("workloads", listed),
            ("storage", _dumps(storage(daemon))),
            ("daemon", _dumps(about(daemon))),
        ]
    )


@functools.cache
def _host() -> str:
    return socket.gethostname()


def about(daemon: Daemon) -> dict[str, Any]:
    """Which daemon answers, since when, and whether its checks run on time (the status
    page's header)."""
    ok, health = daemon_health(daemon, asyncio.get_running_loop().time())
    return {
        # the name events carry, read once by the journal; its own reading without one
        "host": daemon.notifier.journal.host if daemon.notifier else _host(),
        "version": __version__,
        "started_at": health["started_at"],
        "uptime_seconds": round(time.monotonic() - daemon.started_monotonic, 3),
        "status": health["status"],
        "on_time": ok,
        "overdue_seconds": health["scheduler"]["overdue_seconds"],
    }


def storage_files(daemon: Daemon) -> list[tuple[WriteHealth, Journal | None]]:
    """Each file the daemon writes, with the journal that writes it (events.db)."""
    files: list[tuple[WriteHealth, Journal | None]] = [(daemon.writer.health, None)]
    if daemon.notifier is not None:
        journal = daemon.notifier.journal
        files.append((journal.health, journal))
    return files


def _wall(when: float | None) -> str | None:
    return format_time(datetime.fromtimestamp(when, UTC)) if when is not None else None


def storage(daemon: Daemon) -> dict[str, Any]:
    """Whether the daemon can write its files (a full disk): monitoring goes on regardless."""
    files = []
    for health, journal in storage_files(daemon):
        entry: dict[str, Any] = {
            "file": health.name,
            "path": health.path,
            "ok": health.ok,
            "error": health.error or None,
            "failing_since": _wall(health.since),
            "failed_writes": health.failures,
            "last_ok": _wall(health.last_ok),
        }
        if journal is not None:
            entry["unsaved_events"] = journal.unsaved
            entry["dropped_events"] = journal.dropped
            entry["in_memory_only"] = journal.in_memory
        files.append(entry)
    return {"ok": all(f["ok"] for f in files), "files": files}


def problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "file": problem.file,
        "line": problem.line,
        "field": problem.field,
        "reason": problem.reason,
        "message": str(problem),
    }


def workload_entry(config: WorkloadConfig) -> dict[str, Any]:
    cfg = config.with_defaults()
    entry = cfg.to_yaml_mapping()
    if cfg.env is not None:  # names only: a value may be a password (PGPASSWORD)
        entry["env"] = [name for name, _ in cfg.env]
    if cfg.headers is not None:  # names only: a value may be a token (Authorization)
        entry["headers"] = [name for name, _ in cfg.headers]
    entry["interval_seconds"] = cfg.interval
    entry["timeout_seconds"] = cfg.timeout
    entry["restart_delay_seconds"] = cfg.restart_delay
    # Like `healthd list`: without a host the address is looked up when checked.
    entry["checks"] = KINDS[cfg.type].describe(cfg, cfg.host or "(machinectl)")
    return entry


async def encode_workloads(daemon: Daemon) -> bytes:
    """GET /v1/workloads: every ``workload_entry`` and the ``config_errors``, encoded without
    holding the loop for the whole list."""

    def entry(name: str) -> dict[str, Any] | None:
        cfg = daemon.configs.get(name)
        return workload_entry(cfg) if cfg is not None else None

    listed = await encode_list(sorted(daemon.configs), entry, [])
    problems = [problem_json(p) for p in daemon.loaded.problems]
    return encode_object([("workloads", listed), ("config_errors", _dumps(problems))])


def recorded_json(item: Recorded) -> dict[str, Any]:
    out = {
        "time": format_time(datetime.fromtimestamp(item.time, UTC)),
        "ok": item.ok,
        "duration_seconds": round(item.duration, 6),
        "error": item.error,
    }
    if item.note:
        out["note"] = item.note
    return out


def histories(daemon: Daemon, names: list[str], limit: int) -> dict[str, Any]:
    """Several workloads' last results at once (the status page's sparklines); a name not
    configured (any more: the page may be a reload behind) is listed, not an error."""
    known = [n for n in names if n in daemon.statuses]
    return {
        "histories": [history(daemon, n, limit) for n in known],
        "unknown": [n for n in names if n not in daemon.statuses],
    }


def history(daemon: Daemon, name: str, limit: int) -> dict[str, Any]:
    kept = daemon.histories.get(name)
    results = kept.recent(limit) if kept is not None else []
    return {"workload": name, "results": [recorded_json(r) for r in results]}


def check_result(daemon: Daemon, name: str, result: CheckResult) -> dict[str, Any]:
    status = daemon.statuses.get(name)
    return {
        "workload": name,
        "ok": result.ok,
        "duration_seconds": round(result.duration, 6),
        "error": result.error,
        "state": status.shown_state.value if status is not None else State.STARTING.value,
    } | ({"note": result.note} if result.note else {})


def reload_report(report: ReloadReport) -> dict[str, Any]:
    return {
        "ok": not report.problems,
        "added": report.added,
        "removed": report.removed,
        "changed": report.changed,
        "kept": report.kept,
        "unchanged": report.unchanged,
        "config_errors": [problem_json(p) for p in report.problems],
    }


def daemon_health(daemon: Daemon, now: float) -> tuple[bool, dict[str, Any]]:
    """(healthy, details) for /healthz: alive and on time."""
    scheduler = daemon.scheduler
    overdue = scheduler.wheel.overdue(now)
    if not daemon.started.is_set():
        state = "starting"
    elif daemon.stopping:
        state = "stopping"
    elif overdue > STALL_SECONDS:
        state = "stalled"
    elif scheduler.behind:
        state = "behind"
    else:
        state = "ok"
    return state == "ok", {
        "status": state,
        "workloads": len(daemon.statuses),
        "monitored": len(daemon.runners),
        "checks_total": scheduler.checks_total,
        "scheduler": {
            "behind": scheduler.behind,
            "overdue_seconds": round(overdue, 3),
            "busy": scheduler.busy,
            "queued": sum(len(g.waiting) for g in scheduler.gates.values()),
        },
        "started_at": format_time(daemon.started_at),
    }


def sinks(notifier: Notifier, counts: Mapping[str, SinkCounts]) -> dict[str, Any]:
    """Each configured sink: where it delivers (no secrets, no header values), what it wants,
    its outbox by state (from the journal: as long as events are kept) and what its
    dispatcher did since the daemon started."""
    out = []
    for name, dispatcher in notifier.dispatchers.items():
        settings = dispatcher.sink.settings
        entry: dict[str, Any] = {"name": name, "type": settings.type}
        if settings.type == "command":
            entry["command"] = settings.command[0] if settings.command else ""
        else:
            entry["url"] = public_url(settings.url)
            entry["headers"] = sorted(settings.headers)  # names only: values may be secrets
        entry["events"] = [t.value for t in settings.events]
        entry["workloads"] = list(settings.workloads) if settings.workloads is not None else None
        c = counts.get(name)
        entry["pending"] = c.pending if c else 0
        entry["delivered"] = c.delivered if c else 0
        entry["failed"] = c.failed if c else 0
        entry["expired"] = c.expired if c else 0
        entry["suppressed"] = c.suppressed if c else 0
        last_error = c.last_error if c else ""
        entry["last_error"] = redact(last_error, settings)
        last = c.last_delivered if c else None
        entry["last_delivered"] = (
            format_time(datetime.fromtimestamp(last, UTC)) if last is not None else None
        )
        entry["retries"] = dispatcher.retries
        entry["since_start"] = {o: dispatcher.outcomes[o] for o in OUTCOMES}
        out.append(entry)
    return {"sinks": out}
