"""The command line: the only place that parses argv and decides exit codes (the commands
that talk to a running daemon live in ``control.py``).

Exit codes: 0 success; 1 a problem found (invalid config, unhealthy check, unknown
workload); 2 usage or configuration error where the command could not do its job.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from healthd import __version__, containment, durations, orphans, secret_file
from healthd.checks import KINDS
from healthd.checks.exec import pass_environment
from healthd.config import editor, trust
from healthd.config.daemon import DaemonSettings, default_config_dir, default_status_dir
from healthd.config.daemon_file import (
    DEFAULT_DAEMON_CONFIG,
    DEFAULT_LISTEN,
    parse_listen,
    read_daemon_file,
)
from healthd.config.loader import load_dir
from healthd.config.workload import ENV_NAME, WorkloadConfig
from healthd.engine import dependencies
from healthd.errors import ConfigError, DurationError, HealthdError
from healthd.logs import make_logger
from healthd.loop import run_loop
from healthd.store.state_files import state_file_mode
from healthd.tables import print_table

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

    def strict_modes(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--no-strict-modes",
            action="store_true",
            help="as root, run exec checks and restart commands even from files or dirs that "
            "others could change (security.strict_modes: false)",
        )

    strict_modes(run)
    run.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this variable of the daemon's environment to exec checks (repeatable; "
        "added to security.pass_environment)",
    )
    run.add_argument(
        "--no-watch",
        action="store_true",
        help="do not reload by itself when the config dir changes; only on SIGHUP or "
        "healthd reload (reload.watch: false)",
    )

    validate = sub.add_parser("validate", help="check every workload file; exit 1 on problems")
    config_dir(validate)
    daemon_config(validate)
    strict_modes(validate)

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
    add.add_argument(
        "--command",
        dest="exec_command",  # "command" is the subcommand's
        default=None,
        metavar="CMD",
        help="exec: argv (split like a shell, run without one)",
    )
    add.add_argument("--user", default=None, help="exec: run the check as this user (root only)")
    add.add_argument(
        "--group", default=None, help="exec: ... with this group (default: the user's)"
    )
    add.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="exec: a variable of the check's environment (repeatable)",
    )

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

    reset = sub.add_parser(
        "reset",
        help="restore WORKLOAD's restart budget (max_restarts), backoff and flap history; "
        "a workload that gave up is restarted again when it fails",
    )
    api_client(reset)
    reset.add_argument("workload")

    reload = sub.add_parser("reload", help="make the running daemon re-read the config dir")
    api_client(reload)

    events = sub.add_parser("events", help="show the event journal (works without the daemon)")
    status_dir(events)
    events.add_argument("--workload", default=None, help="only this workload's events")
    events.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="TYPE",
        help="only events of this type (repeat it, or comma-separate: unhealthy,restart)",
    )
    events.add_argument(
        "--since",
        default=None,
        metavar="DURATION|TIME",
        help="only events from this long ago on (1h, 30m) or from this RFC 3339 time",
    )
    events.add_argument(
        "--limit", type=int, default=100, metavar="N", help="the last N events (0: all)"
    )
    events.add_argument(
        "-f", "--follow", action="store_true", help="then print new events as they come"
    )
    events.add_argument("--json", action="store_true", help="one JSON object a line")

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
    daemon_file = read_daemon_file(args.daemon_config)
    security = daemon_file.security
    for name in args.pass_env:
        if not ENV_NAME.fullmatch(name):
            print(f"healthd: --pass-env: {name!r} is not a variable name", file=sys.stderr)
            return USAGE
    pass_environment([*security.pass_environment, *args.pass_env])
    settings = DaemonSettings(
        config_dir=args.config_dir,
        status_dir=args.status_dir,
        unit_template=args.unit_template,
        restart_timeout=args.restart_timeout,
        strict_modes=security.strict_modes and not args.no_strict_modes,
        watch_config=daemon_file.reload.watch and not args.no_watch,
        watch_quiet=daemon_file.reload.debounce,
    )
    api = daemon_file.api
    if args.listen is not None:
        try:
            api = dataclasses.replace(api, listen=parse_listen(args.listen))
        except ValueError as exc:
            print(f"healthd: --listen: {exc}", file=sys.stderr)
            return USAGE
    anyone_reads = api.listen is not None and api.listen.is_loopback
    settings = dataclasses.replace(
        settings, state_file_mode=state_file_mode(anyone_may_read_api=anyone_reads)
    )
    log = make_logger(fmt=args.log_format)
    loose, where = secret_file.loose_credentials(daemon_file.path, daemon_file.sinks)
    if loose:  # said at every start: the credentials are readable by others right now
        log.warning(
            "credentials_readable",
            file=str(daemon_file.path),
            keys=", ".join(where),
            problem=loose,
        )
    if not settings.strict_modes and trust.applies():
        log.warning(
            "strict_modes_off",
            message="running exec checks and restart commands from files anyone may change",
        )
    # The daemon's parts are loaded by the daemon only: the other commands start faster.
    from healthd.api.service import ApiService  # noqa: PLC0415
    from healthd.engine.daemon import Daemon  # noqa: PLC0415
    from healthd.events import EventBus, LogSink  # noqa: PLC0415
    from healthd.sinks.notifier import build_notifier  # noqa: PLC0415
    from healthd.systemd import SystemdNotifier  # noqa: PLC0415

    log.info(
        "containment",
        **containment.contain_commands(use_cgroups=security.cgroup_per_command),
    )

    async def serve() -> None:
        orphans.reap_periodically(asyncio.get_running_loop())
        notifier = build_notifier(
            daemon_file, settings.status_dir, log, mode=settings.state_file_mode
        )
        bus = EventBus(log, [LogSink(log), notifier], journal=notifier.journal)
        daemon = Daemon(
            settings,
            bus=bus,
            log=log,
            notifier=notifier,
            systemd=SystemdNotifier.from_environment(log),
        )
        service = ApiService(daemon, api, log)
        await service.start()  # a bad API setting stops the start, before any check runs
        try:
            with daemon.capture_signals():
                await daemon.run()
        finally:
            await service.close()

    try:
        run_loop(serve())
    finally:
        containment.cgroups.close()
    return OK


def cmd_validate(args: argparse.Namespace) -> int:
    strict = read_daemon_file(args.daemon_config).security.strict_modes
    result = load_dir(args.config_dir, strict_modes=strict and not args.no_strict_modes)
    for problem in result.problems:
        print(problem)
    graph = {name: cfg.depends_on or () for name, cfg in result.configs.items()}
    for warning in dependencies.review(graph).warnings():
        print(f"warning: {warning}", file=sys.stderr)
    disabled = sum(not c.enabled for c in result.configs.values())
    summary = f"{len(result.configs)} valid workload(s) ({disabled} disabled)"
    if result.problems:
        print(f"{len(result.problems)} problem(s); {summary}", file=sys.stderr)
        return PROBLEM
    print(f"ok: {summary} in {args.config_dir}")
    return OK


def cmd_add(args: argparse.Namespace) -> int:
    argvs: dict[str, tuple[str, ...] | None] = {"restart-command": None, "command": None}
    for option, text in zip(argvs, (args.restart_command, args.exec_command), strict=True):
        if text is not None:
            try:
                argvs[option] = tuple(shlex.split(text))
            except ValueError as exc:
                print(f"healthd: --{option}: {exc}", file=sys.stderr)
                return USAGE
    env = [item.partition("=") for item in args.env]
    if any(not sep for _, sep, _ in env):
        print("healthd: --env: expected NAME=VALUE", file=sys.stderr)
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
        restart_command=argvs["restart-command"],
        command=argvs["command"],
        user=args.user,
        group=args.group,
        env=tuple((name, value) for name, _, value in env) or None,
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


def cmd_demo(args: argparse.Namespace) -> int:
    from healthd.demo import run_demo  # noqa: PLC0415  (the daemon never loads the demo)

    return run_demo(args.duration)


def cmd_events(args: argparse.Namespace) -> int:
    from healthd.events_cli import cmd_events as show  # noqa: PLC0415  (sqlite3 only here)

    return show(args)


def _live(name: str) -> Callable[[argparse.Namespace], int]:
    """A command of ``control.py``, imported when it runs: its HTTP client is not for the
    daemon (``healthd run`` would carry http.client and the email package for nothing)."""

    def run(args: argparse.Namespace) -> int:
        from healthd import control  # noqa: PLC0415

        handler: Callable[[argparse.Namespace], int] = getattr(control, name)
        return handler(args)

    return run


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "validate": cmd_validate,
    "add": cmd_add,
    "rm": cmd_rm,
    "ls": cmd_ls,
    "status": _live("cmd_status"),
    "check": _live("cmd_check"),
    "pause": _live("cmd_pause"),
    "resume": _live("cmd_resume"),
    "reset": _live("cmd_reset"),
    "reload": _live("cmd_reload"),
    "events": cmd_events,
    "demo": cmd_demo,
}
