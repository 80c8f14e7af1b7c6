"""The bench's output: a table for people, JSON for programs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from bench.flood import LATE, FloodResult, LagWindow
from bench.runner import KindResult, Options
from bench.timewait import HostTcpLimits, TimeWaitCount, TimeWaitSummary
from healthd.durations import format_seconds


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """``value`` formatted, or ``n/a`` when it could not be measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}}{suffix}"


def _peak(tw: TimeWaitSummary | None, side: Callable[[TimeWaitCount], int]) -> str:
    return "n/a" if tw is None else str(side(tw.peak))


COLUMNS: list[tuple[str, Callable[[KindResult], str]]] = [
    ("KIND", lambda r: r.kind),
    ("TARGET", lambda r: r.target),
    ("N", lambda r: str(r.n)),
    ("EXPECTED/s", lambda r: fmt(r.expected_per_s, ".1f")),
    ("ACHIEVED/s", lambda r: fmt(r.achieved_per_s, ".1f")),
    ("KEEP-UP", lambda r: fmt(r.keep_up_pct, ".1f", "%")),
    ("CONN/s", lambda r: fmt(r.connections_per_s, ".1f")),
    ("CPU ms/check", lambda r: fmt(r.cpu_ms_per_check, ".3f")),
    ("CHILDREN ms/check", lambda r: fmt(r.children_cpu_ms_per_check, ".3f")),
    ("PEAK RSS MB", lambda r: fmt(r.peak_rss_mb, ".1f")),
    ("LAG p50 ms", lambda r: fmt(r.lag_p50_ms, ".2f")),
    ("LAG p99 ms", lambda r: fmt(r.lag_p99_ms, ".2f")),
    ("DETECT max s", lambda r: fmt(r.detection_max_s, ".2f")),
    ("BOUND s", lambda r: fmt(r.detection_bound_s, ".2f")),
    ("FALSE FAILS", lambda r: str(r.false_check_fails)),
    ("TW PEAK cli", lambda r: _peak(r.time_wait, lambda c: c.client)),
    ("TW PEAK srv", lambda r: _peak(r.time_wait, lambda c: c.server)),
    ("TW PEAK host", lambda r: _peak(r.time_wait, lambda c: c.host)),
]


def header(opts: Options, environment: str) -> str:
    return (
        f"healthd bench: N={opts.n} interval={format_seconds(opts.interval)} "
        f"timeout={format_seconds(opts.timeout)} retries={opts.retries} "
        f"keep_alive={'true' if opts.keep_alive else 'false'} "
        f"warm-up={opts.warmup:g}s window={opts.window:g}s"
        + (f" flood={opts.flood}x{opts.flood_depth} GET {opts.flood_path}" if opts.flood else "")
        + f" ({environment})"
    )


def table(results: Sequence[KindResult]) -> str:
    rows = [[name for name, _ in COLUMNS]]
    rows += [[cell(r) for _, cell in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def details(results: Sequence[KindResult]) -> str:
    """Per kind: each sentinel's detection latency, and anything worth a note."""
    lines = []
    for r in results:
        latencies = "  ".join(f"{name} {fmt(v, '.3f', 's')}" for name, v in r.detection_s.items())
        lines.append(
            f"{r.kind}: detection {latencies} (bound {r.detection_bound_s:.2f}s); "
            f"checks in window {r.checks_in_window} over {r.window_s:.2f}s; "
            f"daemon CPU {r.cpu_cores * 100:.1f}% of a core; "
            f"false unhealthy {r.false_unhealthy}"
        )
        tw = r.time_wait
        if tw is not None:
            lines.append(
                f"{r.kind}: TIME-WAIT at the end of the window: checker {tw.end.client}, "
                f"target {tw.end.server}, host {tw.end.host} "
                f"({tw.samples} samples, {tw.sample_ms:.1f} ms each)"
            )
        if r.tls is not None:
            versions = ", ".join(f"{v} {n}" for v, n in sorted(r.tls.versions.items()))
            lines.append(
                f"{r.kind}: TLS handshakes at the target over the run: {r.tls.handshakes}, "
                f"of which resumed {r.tls.resumed} ({versions or 'none'})"
            )
        if r.flood is not None:
            lines += flood_lines(r.kind, r.flood)
        lines += [f"{r.kind}: note: {note}" for note in r.notes]
    return "\n".join(lines)


def _lag(w: LagWindow) -> str:
    top = "n/a (over 60 s)" if w.max_ms is None else f"<= {w.max_ms:g}"
    return (
        f"p50 {fmt(w.p50_ms)} ms, p99 {fmt(w.p99_ms)} ms, max {top} ms; "
        f"{w.late_checks} of {w.checks} checks more than {LATE:g}s late; "
        f"scheduler_behind {w.behind_lines}; daemon CPU {w.cpu_cores * 100:.1f}% of a core "
        f"({w.seconds:.1f}s)"
    )


def flood_lines(kind: str, f: FloodResult) -> list[str]:
    """The flood's lines: lag in the quiet and the flooded window, their ratio, and what the
    flood got."""
    answers = ", ".join(f"{n} x {status}" for status, n in sorted(f.answers.items()))
    ratio = fmt(f.p99_ratio, ".2f")
    goal = (
        ""
        if f.p99_ratio is None
        else (" (goal <= 2: met)" if f.p99_ratio <= 2 else " (goal <= 2: NOT met)")
    )
    return [
        f"{kind}: lag, quiet:   {_lag(f.quiet)}",
        f"{kind}: lag, flooded: {_lag(f.flooded)}",
        f"{kind}: flood: {f.connections} connections x {f.depth} pipelined GET {f.path}; "
        f"p99 flooded/quiet {ratio}{goal}; answers {answers or 'none'} "
        f"({f.answers_per_s:.1f}/s, {f.bytes_per_s / 1e6:.1f} MB/s); "
        f"connection errors {f.client_errors}",
    ]


def render_text(opts: Options, environment: str, results: Sequence[KindResult]) -> str:
    return "\n".join([header(opts, environment), table(results), details(results)])


def to_json(
    opts: Options, environment: str, results: Sequence[KindResult], tcp: HostTcpLimits
) -> str:
    body: dict[str, Any] = {
        "options": asdict(opts),
        "environment": environment,
        "host_tcp": {**asdict(tcp), "local_ports": tcp.local_ports},
        "results": [asdict(r) for r in results],
    }
    return json.dumps(body, indent=2, allow_nan=False, default=str)
