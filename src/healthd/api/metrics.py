"""/metrics: the daemon's state in Prometheus' text format, through prometheus_client.

Nothing is counted per check for Prometheus' sake: the numbers already live in the statuses,
the check histories and the scheduler's lag histogram, and a scrape reads them. Reading them
is quick and happens on the event loop (a consistent snapshot); building and encoding the
families, the slow part at thousands of workloads, happens in a thread so checks keep running.

prometheus_client is imported by this module only, and this module only at the first scrape:
a daemon nobody scrapes does not carry it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from healthd import __version__
from healthd.engine.daemon import Daemon
from healthd.engine.history import DURATION_BOUNDS
from healthd.engine.lag import BOUNDS as LAG_BOUNDS
from healthd.model import State


@dataclass(frozen=True, slots=True)
class WorkloadSample:
    name: str
    type: str
    state: State
    checks: int
    fails: int
    consecutive_fails: int
    restarts: int
    restart_failures: int
    last_check: float | None  # Unix seconds
    buckets: tuple[int, ...] | None  # per DURATION_BOUNDS and +Inf, not cumulative
    duration_sum: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    workloads: list[WorkloadSample]
    lag_counts: tuple[int, ...]  # per LAG_BOUNDS and +Inf, not cumulative
    lag_sum: float
    behind: bool
    config_errors: int


def snapshot(daemon: Daemon) -> Snapshot:
    """Copy what a scrape reports; on the event loop, so every number is consistent."""
    samples = []
    for name in sorted(daemon.statuses):
        s = daemon.statuses[name]
        cfg = daemon.configs.get(name)
        history = daemon.histories.get(name)
        buckets = history.buckets if history is not None else None
        samples.append(
            WorkloadSample(
                name=name,
                type=cfg.type if cfg is not None else "",
                state=s.shown_state,
                checks=s.total_checks,
                fails=s.total_fails,
                consecutive_fails=s.consecutive_fails,
                restarts=s.restart_count,
                restart_failures=s.restart_failures,
                last_check=s.last_check.timestamp() if s.last_check else None,
                buckets=tuple(buckets) if buckets is not None else None,
                duration_sum=history.sum if history is not None else 0.0,
            )
        )
    lag = daemon.scheduler.lag
    return Snapshot(
        workloads=samples,
        lag_counts=tuple(lag.counts),
        lag_sum=lag.sum,
        behind=daemon.scheduler.behind,
        config_errors=len(daemon.loaded.problems),
    )


def render(snap: Snapshot, accept: str) -> tuple[bytes, str]:
    """(body, content type) for an ``Accept`` header; safe to call from a thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    ProcessCollector(registry=registry)
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def _histogram_buckets(
    bounds: tuple[float, ...], counts: tuple[int, ...]
) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return out


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        up = GaugeMetricFamily(
            "healthd_workload_up", "1 when the workload is healthy, else 0.", labels=["workload"]
        )
        state = GaugeMetricFamily(
            "healthd_workload_state",
            "The workload's state, one-hot: 1 for the state it is in.",
            labels=["workload", "state"],
        )
        checks = CounterMetricFamily(
            "healthd_checks",
            "Checks run, by result (kept across daemon restarts in statuses.json).",
            labels=["workload", "type", "result"],
        )
        durations = HistogramMetricFamily(
            "healthd_check_duration_seconds",
            "How long checks took, since the daemon started.",
            labels=["workload"],
        )
        consecutive = GaugeMetricFamily(
            "healthd_consecutive_failures",
            "Failed checks in a row.",
            labels=["workload"],
        )
        restarts = CounterMetricFamily(
            "healthd_restarts",
            "Restarts attempted, by outcome.",
            labels=["workload", "outcome"],
        )
        last_check = GaugeMetricFamily(
            "healthd_last_check_timestamp_seconds",
            "When the workload was last checked (Unix time).",
            labels=["workload"],
        )
        for w in snap.workloads:
            up.add_metric([w.name], 1.0 if w.state is State.HEALTHY else 0.0)
            for candidate in State:
                state.add_metric([w.name, candidate.value], 1.0 if w.state is candidate else 0.0)
            checks.add_metric([w.name, w.type, "success"], float(w.checks - w.fails))
            checks.add_metric([w.name, w.type, "failure"], float(w.fails))
            if w.buckets is not None:
                durations.add_metric(
                    [w.name], _histogram_buckets(DURATION_BOUNDS, w.buckets), w.duration_sum
                )
            consecutive.add_metric([w.name], float(w.consecutive_fails))
            restarts.add_metric([w.name, "success"], float(w.restarts))
            restarts.add_metric([w.name, "failure"], float(w.restart_failures))
            if w.last_check is not None:
                last_check.add_metric([w.name], w.last_check)
        yield from (up, state, checks, durations, consecutive, restarts, last_check)

        lag = HistogramMetricFamily(
            "healthd_scheduler_lag_seconds",
            "How late checks started against their schedule.",
        )
        lag.add_metric([], _histogram_buckets(LAG_BOUNDS, snap.lag_counts), snap.lag_sum)
        yield lag
        yield GaugeMetricFamily(
            "healthd_scheduler_behind",
            "1 while checks start late by more than the warning level (the host is overloaded).",
            value=1.0 if snap.behind else 0.0,
        )
        yield GaugeMetricFamily(
            "healthd_config_errors",
            "Problems found in the config dir at the last load or reload.",
            value=float(snap.config_errors),
        )
        info = InfoMetricFamily("healthd_build", "healthd's version.")
        info.add_metric([], {"version": __version__})
        yield info
