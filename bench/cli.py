"""``python -m bench``: what it costs healthd to monitor N workloads, measured from outside."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.cleanup import signals_interrupt
from bench.errors import BenchError, Interrupted
from bench.report import render_text, to_json
from bench.runner import (
    DEFAULT_HEALTHD,
    KindResult,
    Options,
    daemon_argv,
    environment_note,
    run_kind,
)
from bench.timewait import host_tcp_limits
from bench.workloads import HTTP_KINDS, KINDS
from healthd.durations import parse_seconds
from healthd.errors import DurationError


def _duration(text: str) -> float:
    """A Go duration (``1s``, ``500ms``); for --warmup/--window a bare number is seconds too."""
    try:
        value = parse_seconds(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return _duration(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Measure what healthd costs to monitor N workloads on a loopback target: checks "
            "done (counted at the target), CPU and peak RSS of its process tree, scheduler lag, "
            "and how fast it notices three sentinel workloads break."
        ),
    )
    p.add_argument(
        "--kind",
        action="append",
        metavar="KIND",
        help="check kind: http, https, tcp or exec; repeat or give a comma list (default: http)",
    )
    p.add_argument("--n", type=_positive_int, default=1000, help="workloads (default: 1000)")
    p.add_argument("--interval", type=_duration, default=1.0, help="check interval (default: 1s)")
    p.add_argument("--timeout", type=_duration, default=5.0, help="check timeout (default: 5s)")
    p.add_argument("--retries", type=_positive_int, default=3, help="retries (default: 3)")
    p.add_argument(
        "--warmup", type=_seconds, default=5.0, help="seconds before the window (default: 5)"
    )
    p.add_argument("--window", type=_seconds, default=20.0, help="seconds measured (default: 20)")
    p.add_argument(
        "--healthd",
        default=DEFAULT_HEALTHD,
        metavar="COMMAND",
        help="daemon command line with {config} and {status} placeholders (default: %(default)r)",
    )
    p.add_argument(
        "--target",
        choices=["auto", "nginx", "builtin"],
        default="auto",
        help="http/https/tcp target: nginx if on PATH (auto), or the built-in server "
        "(default: auto)",
    )
    p.add_argument(
        "--keep-alive",
        action="store_true",
        help="keep_alive: true in every workload file: one connection kept between checks "
        "instead of a new one per check (http and https only)",
    )
    p.add_argument(
        "--flood",
        type=_positive_int,
        default=0,
        metavar="M",
        help="after the window, measure scheduler lag for another window without and one with "
        "M connections pipelining GETs to healthd's API (a client at nice 19)",
    )
    p.add_argument(
        "--flood-depth",
        type=_positive_int,
        default=16,
        metavar="D",
        help="requests each flood connection keeps outstanding (default: 16)",
    )
    p.add_argument(
        "--flood-path",
        default="/v1/status",
        metavar="PATH",
        help="what the flood asks for (default: /v1/status)",
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    return p


def parse_kinds(values: Sequence[str] | None) -> tuple[str, ...]:
    """``--kind`` values (repeated and/or comma lists) in order, without repeats."""
    kinds: list[str] = []
    for value in values or ["http"]:
        for word in value.split(","):
            kind = word.strip().lower()
            if not kind:
                continue
            if kind not in KINDS:
                raise BenchError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
            if kind not in kinds:
                kinds.append(kind)
    if not kinds:
        raise BenchError("--kind: no kind given")
    return tuple(kinds)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        kinds = parse_kinds(args.kind)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    opts = Options(
        kinds=kinds,
        n=args.n,
        interval=args.interval,
        timeout=args.timeout,
        retries=args.retries,
        warmup=args.warmup,
        window=args.window,
        healthd=args.healthd,
        target=args.target,
        keep_alive=args.keep_alive,
        keep=args.keep,
        flood=args.flood,
        flood_depth=args.flood_depth,
        flood_path=args.flood_path,
    )
    if not opts.flood_path.startswith("/") or any(c.isspace() for c in opts.flood_path):
        print(
            f"bench: --flood-path {opts.flood_path!r}: a path such as /v1/status", file=sys.stderr
        )
        return 2
    no_connection = [k for k in kinds if k not in HTTP_KINDS]
    if opts.keep_alive and no_connection:
        print(
            f"bench: --keep-alive: {' and '.join(no_connection)} checks keep no connection "
            "between checks; it is for --kind http and https only",
            file=sys.stderr,
        )
        return 2
    try:
        daemon_argv(opts.healthd, Path("config"), Path("status"))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    nginx = shutil.which("nginx")
    if opts.target == "nginx" and nginx is None and any(k != "exec" for k in kinds):
        print("bench: --target nginx: nginx is not on PATH", file=sys.stderr)
        return 2
    if "https" in kinds and shutil.which("openssl") is None:
        print(
            "bench: --kind https: the openssl command (for its certificates) is not on PATH",
            file=sys.stderr,
        )
        return 2
    tcp = host_tcp_limits()
    environment = environment_note(tcp)
    results: list[KindResult] = []
    code = 0
    try:
        with signals_interrupt():
            for kind in kinds:
                results.append(run_kind(kind, opts, nginx=nginx, say=say))
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        say(f"bench: interrupted by {name}; everything it started is stopped")
        code = 128 + exc.signum
    except BenchError as exc:
        say(f"bench: {exc}")
        code = 1
    if code and not results:
        return code
    if code:
        say(f"bench: results of the kinds that completed ({len(results)} of {len(kinds)}):")
    text = render_text(opts, environment, results)
    if args.json:
        say(text)
        print(to_json(opts, environment, results, tcp))
    else:
        print(text)
    return code
