"""statuses.json: the reference's JSON shape, read and written both ways.

The reference writes a JSON array of its ``Status`` objects (Go field names, RFC 3339 times,
``0001-01-01T00:00:00Z`` for a time never set, ``last_error`` left out when empty). healthd
writes the same fields the same way, sorted by workload, and adds fields of its own that the
reference's reader ignores. Writes are atomic; a file that cannot be parsed at start is moved
aside, reported, and monitoring starts with what can be salvaged from it (healthd writes one
entry per line, so every whole line of a file cut short is kept) rather than not at all.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from healthd.errors import StatusFileError
from healthd.logs import Logger
from healthd.model import State, WorkloadStatus
from healthd.store.atomic import write_atomic
from healthd.store.state_files import OPEN_TO_LOCAL_USERS, open_state_file

FILENAME = "statuses.json"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
_INT_FIELDS = (
    "consecutive_fails",
    "total_checks",
    "total_fails",
    "restart_count",
    "restart_failures",
)
_MAX_TIMES = 1000  # restart_window allows max_restarts up to 1000
_TIME_FIELDS = (
    "last_check",
    "last_healthy",
    "last_restart",
    "last_restart_attempt",
    "paused_at",
)


def format_time(value: datetime | None) -> str:
    if value is None:
        return GO_ZERO_TIME
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def to_json(s: WorkloadStatus) -> dict[str, Any]:
    out: dict[str, Any] = {
        "workload": s.workload,
        "healthy": s.healthy,
        "last_check": format_time(s.last_check),
        "last_healthy": format_time(s.last_healthy),
        "consecutive_fails": s.consecutive_fails,
        "total_checks": s.total_checks,
        "total_fails": s.total_fails,
        "restart_count": s.restart_count,
    }
    if s.last_error:
        out["last_error"] = s.last_error
    out["last_restart"] = format_time(s.last_restart)
    out["state"] = s.state.value
    out["address"] = s.address
    out["address_source"] = s.address_source
    out["restart_failures"] = s.restart_failures
    if s.last_restart_error:
        out["last_restart_error"] = s.last_restart_error
    if s.last_restart_attempt is not None:
        out["last_restart_attempt"] = format_time(s.last_restart_attempt)
    if s.last_check_duration is not None:
        out["last_check_duration_seconds"] = round(s.last_check_duration, 6)
    if s.last_check_note:
        out["last_check_note"] = s.last_check_note
    if s.paused:
        out["paused"] = True
        out["paused_at"] = format_time(s.paused_at)
        if s.paused_reason:
            out["paused_reason"] = s.paused_reason
    _policy_to_json(s, out)
    return out


def _policy_to_json(s: WorkloadStatus, out: dict[str, Any]) -> None:
    """The restart policies' fields (engine/policy.py), each only when it says something."""
    if s.consecutive_successes:
        out["consecutive_successes"] = s.consecutive_successes
    if s.starting_until is not None:
        out["starting_until"] = format_time(s.starting_until)
    if s.current_restart_delay is not None:
        out["current_restart_delay_seconds"] = round(s.current_restart_delay, 6)
    if s.restart_count_at_reset:
        out["restart_count_at_reset"] = s.restart_count_at_reset
    if s.recent_restarts:
        out["recent_restarts"] = [format_time(t) for t in s.recent_restarts]
    if s.checks_stopped:
        out["checks_stopped"] = True
    if s.restart_held:
        out["restart_held"] = s.restart_held
    if s.flapping:
        out["flapping"] = True
        out["flapping_since"] = format_time(s.flapping_since)
    if s.verdict_changes:
        out["verdict_changes"] = [format_time(t) for t in s.verdict_changes]


def _policy_from_json(obj: dict[str, Any], s: WorkloadStatus) -> None:
    for name in ("consecutive_successes", "restart_count_at_reset"):
        value = obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            setattr(s, name, value)
    s.starting_until = parse_time(obj.get("starting_until"))
    delay = obj.get("current_restart_delay_seconds")
    if isinstance(delay, int | float) and not isinstance(delay, bool) and 0 < delay < 1e9:
        s.current_restart_delay = float(delay)
    s.recent_restarts = _times(obj.get("recent_restarts"))
    s.verdict_changes = _times(obj.get("verdict_changes"))
    s.checks_stopped = obj.get("checks_stopped") is True
    if isinstance(obj.get("restart_held"), str):
        s.restart_held = obj["restart_held"]
    s.flapping = obj.get("flapping") is True
    s.flapping_since = parse_time(obj.get("flapping_since")) if s.flapping else None


def _times(value: Any) -> tuple[datetime, ...]:
    """A saved list of times; what is not one is left out, and the list is bounded (the
    policy keeps at most max_restarts or flap_threshold + 1 of them)."""
    if not isinstance(value, list):
        return ()
    parsed = (parse_time(v) for v in value[-_MAX_TIMES:])
    return tuple(t for t in parsed if t is not None)


def from_json(obj: Any) -> WorkloadStatus | None:
    """One entry, leniently: a field of the wrong type keeps its default; no name, no entry."""
    if not isinstance(obj, dict) or not isinstance(obj.get("workload"), str):
        return None
    s = WorkloadStatus(workload=obj["workload"])
    s.healthy = obj.get("healthy") is True
    for name in _INT_FIELDS:
        value = obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            setattr(s, name, value)
    for name in _TIME_FIELDS:
        setattr(s, name, parse_time(obj.get(name)))
    for name in (
        "last_error", "address", "address_source", "last_restart_error", "paused_reason",
        "last_check_note",
    ):  # fmt: skip
        if isinstance(obj.get(name), str):
            setattr(s, name, obj[name])
    duration = obj.get("last_check_duration_seconds")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        s.last_check_duration = float(duration)
    s.paused = obj.get("paused") is True
    _policy_from_json(obj, s)
    try:
        s.state = State(obj["state"])
        if s.state is State.PAUSED:  # a shown state, not the machine's: derive that
            s.paused = True
            raise ValueError(s.state)
    except (KeyError, ValueError):
        # written by the reference: derive the state from what it recorded
        s.state = State.STARTING
        if s.total_checks:
            s.state = State.HEALTHY if s.healthy else State.UNHEALTHY
    return s


def encode(statuses: Iterable[WorkloadStatus]) -> bytes:
    return StatusEncoder().encode({s.workload: s for s in statuses})


class StatusEncoder:
    """statuses.json bytes: one entry per line, sorted by workload, re-encoding only changes.

    With thousands of workloads the file is rewritten every few seconds; entries that did not
    change since the last call are reused as they were encoded.
    """

    def __init__(self) -> None:
        self._lines: dict[str, bytes] = {}
        self._order: list[str] = []
        self._known: set[str] = set()

    def encode(
        self, statuses: dict[str, WorkloadStatus], changed: Iterable[str] | None = None
    ) -> bytes:
        """``changed``: the workloads whose status changed since the last call (None: all)."""
        self.update(statuses, statuses if changed is None else changed)
        return self.render(statuses)

    def update(self, statuses: dict[str, WorkloadStatus], names: Iterable[str]) -> None:
        """Re-encode the entries of ``names``; callers may spread this over several calls."""
        lines = self._lines
        for name in names:
            status = statuses.get(name)
            if status is not None:
                lines[name] = json.dumps(to_json(status), ensure_ascii=False).encode("utf-8")

    def render(self, statuses: dict[str, WorkloadStatus]) -> bytes:
        """The whole file from the entries encoded so far (new workloads are encoded now)."""
        lines = self._lines
        if statuses.keys() != self._known:  # workloads came or went: rebuild around them
            for name in [n for n in lines if n not in statuses]:
                del lines[name]
            self.update(statuses, statuses.keys() - lines.keys())
            self._known = set(statuses)
            self._order = sorted(statuses)
        if not self._order:
            return b"[]\n"
        return b"[\n" + b",\n".join([lines[n] for n in self._order]) + b"\n]\n"


def decode(data: bytes) -> dict[str, WorkloadStatus]:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusFileError(f"not valid JSON: {exc}") from None
    if raw is None:  # the reference writes "null" when it had no statuses
        return {}
    if not isinstance(raw, list):
        raise StatusFileError("expected a JSON array of statuses")
    out: dict[str, WorkloadStatus] = {}
    for entry in raw:
        status = from_json(entry)
        if status is not None:
            out[status.workload] = status
    return out


def salvage(data: bytes) -> dict[str, WorkloadStatus]:
    """The entries of a damaged statuses.json that are still whole: each line that is one
    JSON object (healthd's layout). A file cut short loses its last, partial entry only."""
    out: dict[str, WorkloadStatus] = {}
    for raw in data.splitlines():
        line = raw.strip().removesuffix(b",")
        if not (line.startswith(b"{") and line.endswith(b"}")):
            continue
        try:
            status = from_json(json.loads(line))
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if status is not None:
            out[status.workload] = status
    return out


class StatusStore:
    """statuses.json in ``status_dir``, with ``mode`` (the daemon's: see store/state_files.py;
    None, for the CLI's offline edits: the mode the file has, else 0644)."""

    def __init__(
        self, status_dir: Path, mode: int | None = None, log: Logger | None = None
    ) -> None:
        self.status_dir = status_dir
        self.path = status_dir / FILENAME
        self.mode = mode
        self.log = log
        self._found_mode: int | None = None

    def read(self) -> dict[str, WorkloadStatus]:
        """Saved statuses; {} when there is no file. Raises StatusFileError when unreadable.
        Never read through a link (one there is removed, logged); given ``mode``."""
        try:
            data = self._read()
        except OSError as exc:
            raise StatusFileError(f"{self.path}: {exc.strerror or exc}") from None
        if data is None:
            return {}
        try:
            return decode(data)
        except StatusFileError as exc:
            raise StatusFileError(f"{self.path}: {exc}") from None

    def _read(self) -> bytes | None:
        fd = open_state_file(self.path, self.mode, self.log, create=False)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as fh:
            self._found_mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            return fh.read()

    def salvage(self) -> dict[str, WorkloadStatus]:
        """What can be kept of an unusable statuses.json (see ``salvage``); {} if unreadable."""
        try:
            data = self._read()
        except OSError:
            return {}
        return salvage(data) if data is not None else {}

    def quarantine(self) -> Path:
        """Move an unusable statuses.json aside, keeping it for a human to look at."""
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}.{time.time_ns() % 1_000_000_000:09d}"
        aside = self.path.with_name(f"{FILENAME}.corrupt-{stamp}")
        self.path.rename(aside)
        return aside

    def write(self, statuses: Iterable[WorkloadStatus]) -> None:
        self.write_bytes(encode(statuses))

    def write_bytes(self, data: bytes) -> None:
        self.status_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, data, self.mode or self._found_mode or OPEN_TO_LOCAL_USERS)
