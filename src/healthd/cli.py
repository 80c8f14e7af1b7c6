"""The command line: the only place that parses argv and decides exit codes.

Exit codes: 0 success; 1 a problem found (invalid config, unhealthy check, unknown
workload); 2 usage or configuration error where the command could not do its job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from healthd import __version__, durations
from healthd.checks import KINDS, run_check
from healthd.client import ApiCallError, ApiClient, NotRunning, candidates, running_daemon
from healthd.config import editor
from healthd.config.daemon import DaemonSettings, default_config_dir, default_status_dir
from healthd.config.daemon_file import (
    DEFAULT_DAEMON_CONFIG,
    DEFAULT_LISTEN,
    DaemonFile,
    load_daemon_file,
    parse_listen,
)
from healthd.config.loader import load_dir
from healthd.config.workload import WorkloadConfig
from healthd.engine.daemon import Daemon
from healthd.engine.lag import BOUNDS as LAG_BOUNDS
from healthd.engine.lag import quantile
from healthd.engine.persist import DAEMON_FILENAME
from healthd.errors import ConfigError, DurationError, HealthdError, StatusFileError
from healthd.events import EventBus, LogSink
from healthd.logs import make_logger
from healthd.loop import run_loop
from healthd.model import State, WorkloadStatus
from healthd.resolve import Address, MachinectlResolver
from healthd.store.status import StatusStore, parse_time, to_json

OK, PROBLEM, USAGE = 0, 1, 2


def _duration(text: str) -> float:
    try:
        return durations.parse_seconds(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healthd", description="Continuous health monitoring for container workloads."
    )
    parser.add_argument("--version", action="version", version=f"healthd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config-dir",
            type=Path,
            default=None,
            help="workload files (default: $HEALTHD_CONFIG_DIR or /etc/volt/health)",
        )

    def status_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--status-dir",
            type=Path,
            default=None,
            help="status files (default: $HEALTHD_STATUS_DIR or /var/lib/volt/health)",
        )

    def daemon_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--daemon-config",
            type=Path,
            default=None,
            metavar="FILE",
            help=f"daemon config file (default: {DEFAULT_DAEMON_CONFIG}, if it exists)",
        )

    run = sub.add_parser("run", help="run the daemon in the foreground")
    config_dir(run)
    status_dir(run)
    run.add_argument(
        "--unit-template",
        default=DaemonSettings.unit_template,
        help="systemd unit restarted when a workload has no restart_command (default: %(default)s)",
    )
    run.add_argument(
        "--restart-timeout",
        type=_duration,
        default=DaemonSettings.restart_timeout,
        metavar="DURATION",
        help="deadline of one restart (default: 1m0s)",
    )
    run.add_argument("--log-format", choices=["logfmt", "json"], default="logfmt")
    daemon_config(run)
    run.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help=f"API address (default: api.listen, or {DEFAULT_LISTEN}); '' turns it off",
    )

    validate = sub.add_parser("validate", help="check every workload file; exit 1 on problems")
    config_dir(validate)

    add = sub.add_parser("add", help="write (or replace) a workload file")
    config_dir(add)
    add.add_argument("workload")
    add.add_argument("--type", required=True, choices=sorted(KINDS))
    add.add_argument("--target", default="", help="http: URL path; exec: shell command")
    add.add_argument("--port", type=int, default=0)
    add.add_argument("--interval", type=_duration, default=30.0, metavar="DURATION")
    add.add_argument("--timeout", type=_duration, default=5.0, metavar="DURATION")
    add.add_argument("--retries", type=int, default=3)
    add.add_argument("--auto-restart", action="store_true")
    add.add_argument("--max-restarts", type=int, default=0, help="0 means unlimited")
    add.add_argument("--restart-delay", type=_duration, default=10.0, metavar="DURATION")
    add.add_argument("--host", default=None, help="address to check instead of machinectl's")
    add.add_argument(
        "--restart-command",
        default=None,
        metavar="CMD",
        help="command line run to restart ({workload} is substituted)",
    )
    add.add_argument("--disabled", action="store_true", help="configure, but do not monitor")

    rm = sub.add_parser("rm", help="remove a workload file")
    config_dir(rm)
    rm.add_argument("workload")
    rm.add_argument("-f", "--force", action="store_true", help="no error if it does not exist")

    ls = sub.add_parser("ls", help="list configured workloads")
    config_dir(ls)
    ls.add_argument("--json", action="store_true")

    def api_client(p: argparse.ArgumentParser) -> None:
        status_dir(p)
        daemon_config(p)
        p.add_argument(
            "--api",
            default=None,
            metavar="URL|SOCKET",
            help="the daemon's API (default: where daemon.json or the daemon config says)",
        )
        p.add_argument(
            "--token-file",
            type=Path,
            default=None,
            help="API token for changes (default: api.token_file; root on the socket needs none)",
        )

    status = sub.add_parser(
        "status", help="ask the running daemon (or read statuses.json when it does not run)"
    )
    config_dir(status)
    api_client(status)
    status.add_argument("workload", nargs="?")
    status.add_argument("--json", action="store_true")

    check = sub.add_parser(
        "check", help="run one workload's check now (through the daemon when it runs)"
    )
    config_dir(check)
    api_client(check)
    check.add_argument("workload")

    pause = sub.add_parser("pause", help="maintenance: keep checking WORKLOAD, never restart it")
    api_client(pause)
    pause.add_argument("workload")
    pause.add_argument("--reason", default="", help="why, shown in the status")

    resume = sub.add_parser("resume", help="end the maintenance of WORKLOAD")
    api_client(resume)
    resume.add_argument("workload")

    reload = sub.add_parser("reload", help="make the running daemon re-read the config dir")
    api_client(reload)

    demo = sub.add_parser("demo", help="watch real local workloads break and be restarted")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds (default: 30)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "config_dir") and args.config_dir is None:
        args.config_dir = default_config_dir()
    if hasattr(args, "status_dir") and args.status_dir is None:
        args.status_dir = default_status_dir()
    handler = COMMANDS[args.command]
    try:
        code = handler(args)
    except HealthdError as exc:
        print(f"healthd: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130
    return code


# -- commands -------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = DaemonSettings(
        config_dir=args.config_dir,
        status_dir=args.status_dir,
        unit_template=args.unit_template,
        restart_timeout=args.restart_timeout,
    )
    api = read_daemon_file(args).api
    if args.listen is not None:
        try:
            api = dataclasses.replace(api, listen=parse_listen(args.listen))
        except ValueError as exc:
            print(f"healthd: --listen: {exc}", file=sys.stderr)
            return USAGE
    log = make_logger(fmt=args.log_format)

    async def serve() -> None:
        from healthd.api.service import ApiService  # noqa: PLC0415  (only the daemon serves)

        daemon = Daemon(settings, bus=EventBus(log, [LogSink(log)]), log=log)
        service = ApiService(daemon, api, log)
        await service.start()  # a bad API setting stops the start, before any check runs
        try:
            with daemon.capture_signals():
                await daemon.run()
        finally:
            await service.close()

    run_loop(serve())
    return OK


def read_daemon_file(args: argparse.Namespace) -> DaemonFile:
    """The daemon config file: the one named (which must exist) or the default (if any)."""
    named = getattr(args, "daemon_config", None)
    return load_daemon_file(named or DEFAULT_DAEMON_CONFIG, required=named is not None)


def cmd_validate(args: argparse.Namespace) -> int:
    result = load_dir(args.config_dir)
    for problem in result.problems:
        print(problem)
    disabled = sum(not c.enabled for c in result.configs.values())
    summary = f"{len(result.configs)} valid workload(s) ({disabled} disabled)"
    if result.problems:
        print(f"{len(result.problems)} problem(s); {summary}", file=sys.stderr)
        return PROBLEM
    print(f"ok: {summary} in {args.config_dir}")
    return OK


def cmd_add(args: argparse.Namespace) -> int:
    restart_command = None
    if args.restart_command is not None:
        try:
            restart_command = tuple(shlex.split(args.restart_command))
        except ValueError as exc:
            print(f"healthd: --restart-command: {exc}", file=sys.stderr)
            return USAGE
    cfg = WorkloadConfig(
        workload=args.workload,
        type=args.type,
        target=args.target,
        port=args.port,
        interval=args.interval,
        timeout=args.timeout,
        retries=args.retries,
        auto_restart=args.auto_restart,
        max_restarts=args.max_restarts,
        restart_delay=args.restart_delay,
        enabled=not args.disabled,
        host=args.host,
        restart_command=restart_command,
    )
    try:
        path, created = editor.write(args.config_dir, cfg)
    except ConfigError as exc:
        for problem in exc.problems:
            print(
                f"healthd: {problem.field}: {problem.reason}"
                if problem.field
                else f"healthd: {problem.reason}",
                file=sys.stderr,
            )
        return PROBLEM
    print(f"{'created' if created else 'updated'} {path}")
    return OK


def cmd_rm(args: argparse.Namespace) -> int:
    removed = editor.remove(args.config_dir, args.workload)
    if not removed:
        if args.force:
            return OK
        print(f"healthd: no such workload {args.workload!r} in {args.config_dir}", file=sys.stderr)
        return PROBLEM
    for path in removed:
        print(f"removed {path}")
    return OK


def cmd_ls(args: argparse.Namespace) -> int:
    result = load_dir(args.config_dir)
    for problem in result.problems:
        print(f"healthd: {problem}", file=sys.stderr)
    configs = [c.with_defaults() for c in result.configs.values()]
    if args.json:
        print(json.dumps([c.to_yaml_mapping() for c in configs], indent=2))
        return OK
    rows = [["WORKLOAD", "TYPE", "CHECKS", "INTERVAL", "TIMEOUT", "RETRIES", "RESTART", "STATE"]]
    for c in configs:
        kind = KINDS[c.type]
        address = c.host or "(machinectl)"
        restart = "no"
        if c.auto_restart:
            restart = f"max {c.max_restarts}" if c.max_restarts else "unlimited"
        rows.append(
            [
                c.workload,
                c.type,
                kind.describe(c, address),
                durations.format_seconds(c.interval),
                durations.format_seconds(c.timeout),
                str(c.retries),
                restart,
                "enabled" if c.enabled else "disabled",
            ]
        )
    print_table(rows)
    if not configs and not result.problems:
        print(f"no workloads in {args.config_dir}", file=sys.stderr)
    return OK


def client_for(args: argparse.Namespace, *, changes: bool) -> ApiClient:
    """A client for the daemon's API; the token is read only for calls that change things."""
    daemon_file = read_daemon_file(args)
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
            f"healthd: the daemon is not running ({exc}); showing the saved statuses.json",
            file=sys.stderr,
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
    if args.json:
        print(json.dumps(entries[0] if args.workload else entries, indent=2))
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
    except NotRunning:
        print("note: the daemon is not running; checking from here", file=sys.stderr)
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
    return change(args, "pause", body)


def cmd_resume(args: argparse.Namespace) -> int:
    return change(args, "resume", None)


def change(args: argparse.Namespace, action: str, body: dict[str, Any] | None) -> int:
    """Pause or resume through the daemon; with no daemon running, in statuses.json, where
    the daemon finds it at its next start."""
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
        return change_saved(args, action == "pause")
    print(f"{args.workload}: {answer['state']}")
    return OK


def change_saved(args: argparse.Namespace, paused: bool) -> int:
    store = StatusStore(args.status_dir)
    statuses = store.read()
    status = statuses.get(args.workload)
    if status is None:
        print(f"healthd: no status for workload {args.workload!r} in {store.path}", file=sys.stderr)
        return PROBLEM
    status.paused = paused
    status.paused_at = datetime.now(UTC) if paused else None
    status.paused_reason = args.reason if paused else ""
    store.write(statuses.values())
    state = "paused" if paused else "resumed"
    print(
        f"{args.workload}: {state} in {store.path} (the daemon is not running; it applies at start)"
    )
    return OK


def cmd_reload(args: argparse.Namespace) -> int:
    client = client_for(args, changes=True)
    try:
        report = client.call("POST", "/-/reload")
    except NotRunning as exc:
        print(f"healthd: the daemon is not running: {exc}", file=sys.stderr)
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

    address, result = run_loop(once())
    target = KINDS[cfg.type].describe(cfg, address.host if address else "")
    took = f"{result.duration * 1000:.1f} ms"
    if address is not None and address.is_fallback:
        print(f"note: address {address.host} ({address.source})", file=sys.stderr)
    if result.ok:
        print(f"{cfg.workload}: healthy ({took}) {target}")
        return OK
    print(f"{cfg.workload}: unhealthy ({took}) {result.error}")
    return PROBLEM


def cmd_demo(args: argparse.Namespace) -> int:
    from healthd.demo import run_demo  # noqa: PLC0415  (the daemon never loads the demo)

    return run_demo(args.duration)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "validate": cmd_validate,
    "add": cmd_add,
    "rm": cmd_rm,
    "ls": cmd_ls,
    "status": cmd_status,
    "check": cmd_check,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "reload": cmd_reload,
    "demo": cmd_demo,
}


# -- output helpers -------------------------------------------------------------------------


def ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    seconds = max(0.0, (now - when).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
