"""/metrics: the daemon's state in Prometheus' text format, through prometheus_client.

Nothing is counted per check for Prometheus' sake: the numbers already live in the statuses,
the check histories and the scheduler's lag histogram, and a scrape reads them. Reading them
is quick and happens on the event loop (a consistent snapshot); building and encoding the
families, the slow part at thousands of workloads, goes a slice at a time, checks running in
between (see ``render``).

prometheus_client is imported by this module only, and this module only at the first scrape:
a daemon nobody scrapes does not carry it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as TEXT_TYPE
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector

from healthd import __version__
from healthd.api import views
from healthd.engine.daemon import Daemon
from healthd.engine.history import DURATION_BOUNDS
from healthd.engine.lag import BOUNDS as LAG_BOUNDS
from healthd.model import EventType, State, WorkloadStatus
from healthd.store.journal import OUTCOMES

RETRY = "retry"  # an attempt that failed and will be made again: not an outcome, but counted


@dataclass(frozen=True, slots=True)
class WorkloadSample:
    name: str
    type: str
    state: State  # as shown: "paused" during maintenance
    up: bool  # see _up_now
    checks: int
    fails: int
    consecutive_fails: int
    restarts: int
    restart_failures: int
    last_check: float | None  # Unix seconds
    buckets: tuple[int, ...] | None  # per DURATION_BOUNDS and +Inf, not cumulative
    duration_sum: float
    cert_expiry: float | None = None  # https: seconds until the server certificate expires


@dataclass(frozen=True, slots=True)
class SinkSample:
    name: str
    outcomes: dict[str, int]  # since the daemon started, per OUTCOMES and RETRY
    pending: int | None  # in the outbox now; None when the journal could not be read


@dataclass(frozen=True, slots=True)
class StorageSample:
    file: str
    ok: bool
    failures: int  # failed writes since the daemon started
    events: tuple[int, int] | None  # events.db only: held in memory, given up


@dataclass(frozen=True, slots=True)
class Snapshot:
    workloads: list[WorkloadSample]
    lag_counts: tuple[int, ...]  # per LAG_BOUNDS and +Inf, not cumulative
    lag_sum: float
    behind: bool
    config_errors: int
    sinks: list[SinkSample]
    events: dict[str, int] | None  # committed since the start, by type; None: no journal
    storage: list[StorageSample]


def _up_now(status: WorkloadStatus, daemon: Daemon) -> bool:
    """Healthy by the state machine; while paused (the machine waits) by the latest checks
    against the same threshold, so maintenance shows what the checks see."""
    if not status.paused:
        return status.state is State.HEALTHY
    runner = daemon.runners.get(status.workload)
    retries = runner.policy.settings.retries if runner is not None else 1
    return status.last_check is not None and status.consecutive_fails < retries


def snapshot(
    daemon: Daemon,
    pending: Mapping[str, int] | None = None,
    events: Mapping[str, int] | None = None,
) -> Snapshot:
    """Copy what a scrape reports; on the event loop, so every number is consistent.
    ``pending``: each sink's outbox, read from the journal (in a thread) just before;
    ``events``: events committed since the start, by type."""
    samples = []
    now = time.time()
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
                up=_up_now(s, daemon),
                checks=s.total_checks,
                fails=s.total_fails,
                consecutive_fails=s.consecutive_fails,
                restarts=s.restart_count,
                restart_failures=s.restart_failures,
                last_check=s.last_check.timestamp() if s.last_check else None,
                buckets=tuple(buckets) if buckets is not None else None,
                duration_sum=history.sum if history is not None else 0.0,
                cert_expiry=s.cert_not_after - now
                if s.cert_not_after is not None and cfg is not None and cfg.scheme == "https"
                else None,
            )
        )
    sinks = []
    notifier = daemon.notifier
    for name, dispatcher in notifier.dispatchers.items() if notifier is not None else ():
        outcomes = {o: dispatcher.outcomes[o] for o in OUTCOMES}
        outcomes[RETRY] = dispatcher.retries
        known = pending.get(name, 0) if pending is not None else None
        sinks.append(SinkSample(name, outcomes, known))
    lag = daemon.scheduler.lag
    return Snapshot(
        workloads=samples,
        lag_counts=tuple(lag.counts),
        lag_sum=lag.sum,
        behind=daemon.scheduler.behind,
        config_errors=len(daemon.loaded.problems),
        sinks=sinks,
        events={t.value: events.get(t.value, 0) for t in EventType}
        if notifier is not None and events is not None
        else None,
        storage=[
            StorageSample(h.name, h.ok, h.failures, (j.unsaved, j.dropped) if j else None)
            for h, j in views.storage_files(daemon)
        ],
    )


# Workloads per encoded slice: about 5 ms of encoding, so checks run between slices.
SLICE = 50


def wants_openmetrics(accept: str) -> bool:
    """OpenMetrics only for a client that does not take the classic text format: that one
    costs half as much to encode, and Prometheus accepts both."""
    return "application/openmetrics-text" in accept and "text/plain" not in accept


def content_type(openmetrics: bool) -> str:
    return OPENMETRICS_TYPE if openmetrics else TEXT_TYPE


async def render(snap: Snapshot, openmetrics: bool) -> bytes:
    """The body, OpenMetrics or the classic text format. Encoded on the event loop a slice of
    workloads at a time, with checks running in between: at 5,000 workloads the encoder takes
    seconds of CPU, and in a thread it would starve the loop of the GIL instead (each of its
    wake-ups waits for it)."""
    encode = openmetrics_latest if openmetrics else text_latest
    parts: list[bytes] = []
    for family in _WORKLOAD_FAMILIES:
        for start in range(0, max(len(snap.workloads), 1), SLICE):
            metric = family(snap.workloads[start : start + SLICE])
            if not metric.samples and start:
                continue
            chunk = encode(_registry(_Fixed([metric])))
            parts.append(_body(chunk, keep_header=start == 0))
            await asyncio.sleep(0)
    registry = _registry(_Fixed(list(_daemon_families(snap))))
    ProcessCollector(registry=registry)
    parts.append(_body(encode(registry), keep_header=True))
    if openmetrics:
        parts.append(b"# EOF\n")
    return b"".join(parts)


def _body(chunk: bytes, *, keep_header: bool) -> bytes:
    """A family's encoded samples: its header (HELP, TYPE, UNIT) once, and no "# EOF" (each
    encoder call ends with one in OpenMetrics; the whole answer gets one at its end)."""
    lines = chunk.splitlines(keepends=True)
    if keep_header:
        return b"".join(line for line in lines if line != b"# EOF\n")
    return b"".join(line for line in lines if not line.startswith(b"# "))


def _registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def _histogram_buckets(
    bounds: tuple[float, ...], counts: tuple[int, ...]
) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return out


def _up(workloads: list[WorkloadSample]) -> Metric:
    family = GaugeMetricFamily(
        "healthd_workload_up",
        "1 when the workload's checks find it healthy (while paused: by its latest checks).",
        labels=["workload"],
    )
    for w in workloads:
        family.add_metric([w.name], 1.0 if w.up else 0.0)
    return family


def _state(workloads: list[WorkloadSample]) -> Metric:
    family = GaugeMetricFamily(
        "healthd_workload_state",
        "The workload's state, one-hot: 1 for the state it is in.",
        labels=["workload", "state"],
    )
    for w in workloads:
        for candidate in State:
            family.add_metric([w.name, candidate.value], 1.0 if w.state is candidate else 0.0)
    return family


def _checks(workloads: list[WorkloadSample]) -> Metric:
    family = CounterMetricFamily(
        "healthd_checks",
        "Checks run, by result (kept across daemon restarts in statuses.json).",
        labels=["workload", "type", "result"],
    )
    for w in workloads:
        family.add_metric([w.name, w.type, "success"], float(w.checks - w.fails))
        family.add_metric([w.name, w.type, "failure"], float(w.fails))
    return family


def _durations(workloads: list[WorkloadSample]) -> Metric:
    family = HistogramMetricFamily(
        "healthd_check_duration_seconds",
        "How long checks took, since the daemon started.",
        labels=["workload"],
    )
    for w in workloads:
        if w.buckets is not None:
            family.add_metric(
                [w.name], _histogram_buckets(DURATION_BOUNDS, w.buckets), w.duration_sum
            )
    return family


def _consecutive(workloads: list[WorkloadSample]) -> Metric:
    family = GaugeMetricFamily(
        "healthd_consecutive_failures", "Failed checks in a row.", labels=["workload"]
    )
    for w in workloads:
        family.add_metric([w.name], float(w.consecutive_fails))
    return family


def _restarts(workloads: list[WorkloadSample]) -> Metric:
    family = CounterMetricFamily(
        "healthd_restarts", "Restarts attempted, by outcome.", labels=["workload", "outcome"]
    )
    for w in workloads:
        family.add_metric([w.name, "success"], float(w.restarts))
        family.add_metric([w.name, "failure"], float(w.restart_failures))
    return family


def _last_check(workloads: list[WorkloadSample]) -> Metric:
    family = GaugeMetricFamily(
        "healthd_last_check_timestamp_seconds",
        "When the workload was last checked (Unix time).",
        labels=["workload"],
    )
    for w in workloads:
        if w.last_check is not None:
            family.add_metric([w.name], w.last_check)
    return family


def _cert_expiry(workloads: list[WorkloadSample]) -> Metric:
    family = GaugeMetricFamily(
        "healthd_tls_cert_expiry_seconds",
        "https: seconds until the certificate the server last presented expires (negative: "
        "expired).",
        labels=["workload"],
    )
    for w in workloads:
        if w.cert_expiry is not None:
            family.add_metric([w.name], round(w.cert_expiry, 3))
    return family


_WORKLOAD_FAMILIES: tuple[Callable[[list[WorkloadSample]], Metric], ...] = (
    _up,
    _state,
    _checks,
    _durations,
    _consecutive,
    _restarts,
    _last_check,
    _cert_expiry,
)


def _daemon_families(snap: Snapshot) -> Iterator[Metric]:
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
    deliveries = CounterMetricFamily(
        "healthd_event_deliveries",
        "Event deliveries by outcome since the daemon started; retry counts attempts that "
        "failed and are made again.",
        labels=["sink", "outcome"],
    )
    pending = GaugeMetricFamily(
        "healthd_outbox_pending", "Deliveries waiting in the sink's outbox.", labels=["sink"]
    )
    for sink in snap.sinks:
        for outcome, count in sink.outcomes.items():
            deliveries.add_metric([sink.name, outcome], float(count))
        if sink.pending is not None:
            pending.add_metric([sink.name], float(sink.pending))
    yield deliveries
    yield pending
    if snap.events is not None:
        events = CounterMetricFamily(
            "healthd_events",
            "Events committed to the journal since the daemon started, by type.",
            labels=["type"],
        )
        for kind, count in snap.events.items():
            events.add_metric([kind], float(count))
        yield events
    yield from _storage_families(snap.storage)
    info = InfoMetricFamily("healthd_build", "healthd's version.")
    info.add_metric([], {"version": __version__})
    yield info


def _storage_families(files: list[StorageSample]) -> Iterator[Metric]:
    ok = GaugeMetricFamily(
        "healthd_storage_ok",
        "1 while the daemon's writes of the file succeed; 0 while they fail (a full disk).",
        labels=["file"],
    )
    failures = CounterMetricFamily(
        "healthd_storage_write_failures",
        "Failed writes of the file since the daemon started (each is tried again).",
        labels=["file"],
    )
    for f in files:
        ok.add_metric([f.file], 1.0 if f.ok else 0.0)
        failures.add_metric([f.file], float(f.failures))
    yield ok
    yield failures
    for f in files:
        if f.events is not None:
            yield GaugeMetricFamily(
                "healthd_events_unsaved",
                "Events published but not yet committed to events.db (held in memory).",
                value=float(f.events[0]),
            )
            yield CounterMetricFamily(
                "healthd_events_dropped",
                "Events given up, oldest first, when more than the limit waited for the disk.",
                value=float(f.events[1]),
            )
