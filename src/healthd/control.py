"""The CLI commands that ask or change the running daemon: status, check, pause, resume,
reset, reload. Each goes through the daemon's API (``client.py`` finds it) and says plainly
what it does when no daemon answers: status reads statuses.json, check runs here, pause,
resume and reset edit statuses.json for the next start, reload has nothing to do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from healthd import containment
from healthd.checks import KINDS, run_check
from healthd.cli import OK, PROBLEM, USAGE
from healthd.client import ApiCallError, ApiClient, NotRunning, candidates, running_daemon
from healthd.config import editor
from healthd.config.daemon_file import read_daemon_file
from healthd.config.loader import load_dir
from healthd.engine.lag import BOUNDS as LAG_BOUNDS
from healthd.engine.lag import quantile
from healthd.engine.persist import DAEMON_FILENAME
from healthd.engine.policy import reset_budget
from healthd.errors import HealthdError, StatusFileError
from healthd.loop import run_loop
from healthd.model import State, WorkloadStatus
from healthd.resolve import Address, MachinectlResolver
from healthd.store.status import StatusStore, parse_time, to_json
from healthd.tables import ago, print_table


def not_running(args: argparse.Namespace, exc: NotRunning) -> str:
    """Why no daemon answered, for people: not running at all, or running without an API."""
    pid, _ = running_daemon(args.status_dir)
    if pid is not None:
        return f"the daemon (pid {pid}) runs but its API does not answer ({exc})"
    return f"the daemon is not running ({exc})"  # also when daemon.json names a dead pid


def counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in entries:
        out[entry["state"]] = out.get(entry["state"], 0) + 1
    return out


def client_for(args: argparse.Namespace, *, changes: bool) -> ApiClient:
    """A client for the daemon's API; the token is read only for calls that change things."""
    daemon_file = read_daemon_file(args.daemon_config)
    token = None
    token_file = args.token_file or daemon_file.api.token_file
    if changes and token_file is not None:
        from healthd.api.auth import TokenFileError, read_token  # noqa: PLC0415

        try:
            token = read_token(token_file).decode("ascii")
        except TokenFileError:
            if args.token_file is not None:
                raise
            # Not ours to read (not root): root on the socket needs none, else the call says.
    return ApiClient(candidates(args.api, args.status_dir, daemon_file), token)


def cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args, changes=False)
    path = f"/v1/status/{quote(args.workload, safe='')}" if args.workload else "/v1/status"
    try:
        answer = client.call("GET", path)
    except ApiCallError as exc:
        print(f"healthd: {exc}", file=sys.stderr)
        return PROBLEM
    except NotRunning as exc:
        print(
            f"healthd: {not_running(args, exc)}; showing the saved statuses.json", file=sys.stderr
        )
        return saved_status(args)
    entries = [answer] if args.workload else answer["workloads"]
    if args.json:
        print(json.dumps(answer, indent=2))
        return OK
    now = datetime.now(UTC)
    print_statuses([(e, parse_time(e.get("last_check"))) for e in entries], now)
    if not args.workload:
        line = daemon_line(args.status_dir / DAEMON_FILENAME, now)
        if line:
            print(f"\n{line}")
    return OK


def print_statuses(rows_in: list[tuple[dict[str, Any], datetime | None]], now: datetime) -> None:
    rows = [["WORKLOAD", "STATE", "LAST CHECK", "FAILS", "CHECKS", "RESTARTS", "LAST ERROR"]]
    for e, last_check in rows_in:
        rows.append(
            [
                str(e["workload"]),
                str(e["state"]),
                ago(last_check, now),
                f"{e['consecutive_fails']}/{e['total_fails']}",
                str(e["total_checks"]),
                str(e["restart_count"]),
                str(e.get("last_error", ""))[:60],
            ]
        )
    print_table(rows)


def saved_status(args: argparse.Namespace) -> int:
    """``healthd status`` without a daemon: what statuses.json and the config dir say."""
    try:
        statuses = StatusStore(args.status_dir).read()
    except StatusFileError as exc:
        print(f"healthd: {exc}", file=sys.stderr)
        return USAGE
    configured = load_dir(args.config_dir).configs if args.config_dir.is_dir() else {}
    for name, cfg in configured.items():
        if name not in statuses:  # configured since the daemon last wrote its status
            statuses[name] = WorkloadStatus(workload=name, state=State.STARTING)
        if not cfg.enabled:
            statuses[name].state = State.DISABLED
    if args.workload:
        if args.workload not in statuses:
            print(f"healthd: no status for workload {args.workload!r}", file=sys.stderr)
            return PROBLEM
        statuses = {args.workload: statuses[args.workload]}
    ordered = sorted(statuses.values(), key=lambda s: s.workload)
    entries = []
    for s in ordered:
        entry = to_json(s)
        entry["state"] = s.shown_state.value
        entries.append(entry)
    if args.json:  # the shape the API answers, so scripts work with and without a daemon
        body: Any = (
            entries[0] if args.workload else {"counts": counts(entries), "workloads": entries}
        )
        print(json.dumps(body, indent=2))
        return OK
    now = datetime.now(UTC)
    print_statuses([(e, s.last_check) for e, s in zip(entries, ordered, strict=True)], now)
    if not args.workload:
        line = daemon_line(args.status_dir / DAEMON_FILENAME, now)
        if line:
            print(f"\n{line}")
    return OK


def daemon_line(path: Path, now: datetime) -> str | None:
    """How the daemon keeps up, from the daemon.json it writes beside statuses.json."""
    try:
        summary = json.loads(path.read_bytes())
        scheduler = summary["scheduler"]
        counts = [int(count) for _, count in scheduler["lag_seconds_buckets"]]
        updated = parse_time(summary["updated_at"])
        line = (
            f"daemon: pid {int(summary['pid'])}, updated {ago(updated, now)}; "
            f"{int(summary['workloads'])} workloads, {int(summary['checks_total'])} checks"
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"daemon: {path.name} unreadable ({type(exc).__name__}: {exc})"
    if len(counts) != len(LAG_BOUNDS) + 1 or not counts[-1]:
        return line
    p50, p99 = (quantile(q, counts) for q in (0.5, 0.99))
    state = "BEHIND, checks start late" if scheduler.get("behind") else "on time"
    lag = f"lag since start: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    return f"{line}; scheduler {state} ({lag})"


def cmd_check(args: argparse.Namespace) -> int:
    client = client_for(args, changes=True)
    try:
        answer = client.call("POST", f"/v1/workloads/{quote(args.workload, safe='')}/check")
    except NotRunning as exc:
        print(f"note: {not_running(args, exc)}; checking from here", file=sys.stderr)
        return check_here(args)
    except ApiCallError as exc:
        print(f"healthd: {exc}", file=sys.stderr)
        return PROBLEM
    took = f"{answer['duration_seconds'] * 1000:.1f} ms"
    verdict = "healthy" if answer["ok"] else f"unhealthy: {answer['error']}"
    print(f"{args.workload}: {verdict} ({took}); state {answer['state']}")
    return OK if answer["ok"] else PROBLEM


def cmd_pause(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else None
    return change(args, "pause", body, saved=lambda s: _set_paused(s, True, args.reason))


def cmd_resume(args: argparse.Namespace) -> int:
    return change(args, "resume", None, saved=lambda s: _set_paused(s, False, ""))


def cmd_reset(args: argparse.Namespace) -> int:
    """Restore the restart budget through the daemon; with none running, in statuses.json."""

    def shown(answer: dict[str, Any]) -> str:
        left = answer.get("restart_budget_left")
        budget = "unlimited restarts" if left is None else f"{left} restart(s) left"
        return f"restart budget restored ({budget}); state {answer['state']}"

    return change(args, "reset", None, saved=_reset_saved, shown=shown)


def _set_paused(status: WorkloadStatus, paused: bool, reason: str) -> str:
    status.paused = paused
    status.paused_at = datetime.now(UTC) if paused else None
    status.paused_reason = reason if paused else ""
    return "paused" if paused else "resumed"


def _reset_saved(status: WorkloadStatus) -> str:
    reset_budget(status)
    return "restart budget restored"


def change(
    args: argparse.Namespace,
    action: str,
    body: dict[str, Any] | None,
    *,
    saved: Callable[[WorkloadStatus], str],
    shown: Callable[[dict[str, Any]], str] = lambda answer: str(answer["state"]),
) -> int:
    """POST ``action`` for the workload through the daemon; with no daemon running, ``saved``
    makes the change in statuses.json (and says what it did), where the daemon finds it at
    its next start."""
    client = client_for(args, changes=True)
    try:
        answer = client.call(
            "POST", f"/v1/workloads/{quote(args.workload, safe='')}/{action}", body
        )
    except ApiCallError as exc:
        print(f"healthd: {exc}", file=sys.stderr)
        return PROBLEM
    except NotRunning as exc:
        pid, _ = running_daemon(args.status_dir)
        if pid is not None:  # it runs but cannot be reached: writing the file would be lost
            raise HealthdError(
                f"the daemon (pid {pid}) runs but its API does not answer: {exc}"
            ) from None
        return change_saved(args, saved)
    print(f"{args.workload}: {shown(answer)}")
    return OK


def change_saved(args: argparse.Namespace, edit: Callable[[WorkloadStatus], str]) -> int:
    store = StatusStore(args.status_dir)
    statuses = store.read()
    status = statuses.get(args.workload)
    if status is None:
        print(f"healthd: no status for workload {args.workload!r} in {store.path}", file=sys.stderr)
        return PROBLEM
    done = edit(status)
    store.write(statuses.values())
    print(
        f"{args.workload}: {done} in {store.path} (the daemon is not running; it applies at start)"
    )
    return OK


def cmd_reload(args: argparse.Namespace) -> int:
    client = client_for(args, changes=True)
    try:
        report = client.call("POST", "/-/reload")
    except NotRunning as exc:
        print(f"healthd: {not_running(args, exc)}", file=sys.stderr)
        return PROBLEM
    except ApiCallError as exc:
        print(f"healthd: {exc}", file=sys.stderr)
        return PROBLEM
    for key in ("added", "changed", "removed", "kept"):
        if report[key]:
            print(f"{key}: {', '.join(report[key])}")
    print(f"unchanged: {report['unchanged']}")
    for problem in report["config_errors"]:
        print(f"config error: {problem['message']}", file=sys.stderr)
    return OK if report["ok"] else PROBLEM


def check_here(args: argparse.Namespace) -> int:
    cfg, problems = editor.find(args.config_dir, args.workload)
    if cfg is None:
        for problem in problems:
            print(f"healthd: {problem}", file=sys.stderr)
        return USAGE
    cfg = cfg.with_defaults()

    async def once() -> tuple[Address | None, Any]:
        address = None
        if KINDS[cfg.type].needs_address:
            address = (
                Address(cfg.host, "host")
                if cfg.host
                else await MachinectlResolver().resolve(cfg.workload)
            )
        return address, await run_check(cfg, address.host if address else "")

    # one command: a cgroup for it costs one grace period, nothing like the daemon's every check
    containment.contain_commands(use_cgroups=True)
    try:
        address, result = run_loop(once())
    finally:
        containment.cgroups.close()
    target = KINDS[cfg.type].describe(cfg, address.host if address else "")
    took = f"{result.duration * 1000:.1f} ms"
    if address is not None and address.is_fallback:
        print(f"note: address {address.host} ({address.source})", file=sys.stderr)
    if result.ok:
        print(f"{cfg.workload}: healthy ({took}) {target}")
        return OK
    print(f"{cfg.workload}: unhealthy ({took}) {result.error}")
    return PROBLEM
