"""Quantiles of cumulative (Prometheus-style) histograms, and the scheduler lag of a window.

healthd's ``daemon.json`` carries its scheduler lag as cumulative buckets: ``[[le, count], ...]``
where ``count`` is the number of observations ``<= le`` since the daemon started and the last
bucket is ``"+Inf"``. The bench reads it at the start and at the end of its window; the window's
own histogram is the bucket-wise difference, and its quantiles are estimated the way
Prometheus' ``histogram_quantile`` does: linear interpolation inside the bucket the rank falls in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Bucket = tuple[float, float]  # (upper bound "le", cumulative count)


def histogram_quantile(q: float, buckets: Sequence[Bucket]) -> float:
    """The ``q``-quantile (0 <= q <= 1) of a cumulative histogram, as Prometheus computes it.

    - NaN when ``q`` is NaN, when there is no ``+Inf`` bucket, fewer than two buckets, or no
      observations; ``-inf`` for ``q < 0`` and ``+inf`` for ``q > 1``.
    - Buckets may come in any order; equal bounds are merged (counts added) and counts that
      decrease with the bound are raised to the running maximum (as Prometheus does for
      scrapes that are not atomic).
    - A rank falling in the ``+Inf`` bucket yields the highest finite bound; in the first
      bucket the lower edge is 0, unless that bucket's bound is <= 0, which is then returned.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0.0) + count
    ordered = sorted(merged.items())
    if len(ordered) < 2 or ordered[-1][0] != math.inf:
        return math.nan
    monotonic: list[Bucket] = []
    highest = -math.inf
    for bound, count in ordered:
        highest = max(highest, count)
        monotonic.append((bound, highest))
    observations = monotonic[-1][1]
    if observations <= 0:
        return math.nan
    rank = q * observations
    index = next(
        (i for i, (_, count) in enumerate(monotonic[:-1]) if count >= rank), len(monotonic) - 1
    )
    if index == len(monotonic) - 1:
        return monotonic[-2][0]
    bound, count = monotonic[index]
    if index == 0 and bound <= 0:
        return bound
    start = 0.0
    if index > 0:
        previous_bound, previous_count = monotonic[index - 1]
        start = previous_bound
        count -= previous_count
        rank -= previous_count
    if count <= 0:  # only for q == 0 over an empty first bucket: 0/0, NaN in Prometheus too
        return math.nan
    return start + (bound - start) * (rank / count)


def parse_buckets(raw: Any) -> list[Bucket] | None:
    """``[[le, count], ...]`` from JSON (``le`` a number or a string such as ``"+Inf"``)."""
    if not isinstance(raw, list) or not raw:
        return None
    out: list[Bucket] = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2:
            return None
        le, count = item
        if isinstance(le, bool) or isinstance(count, bool):
            return None
        if not isinstance(le, int | float | str) or not isinstance(count, int | float):
            return None
        try:
            bound = float(le)  # "+Inf" and "Inf" included
        except ValueError:
            return None
        value = float(count)
        if math.isnan(bound) or math.isnan(value):
            return None
        out.append((bound, value))
    return out


def window_buckets(start: Sequence[Bucket], end: Sequence[Bucket]) -> list[Bucket] | None:
    """The histogram of the observations made between two cumulative snapshots.

    None when the two do not have the same bounds, or when a count went down (the daemon was
    restarted between them): no window histogram can be derived then.
    """
    if [b for b, _ in start] != [b for b, _ in end]:
        return None
    out: list[Bucket] = []
    for (bound, before), (_, after) in zip(start, end, strict=True):
        if after < before:
            return None
        out.append((bound, after - before))
    return out


@dataclass(frozen=True)
class LagQuantiles:
    """Scheduler lag over the window, in seconds; ``None`` with ``note`` saying why not."""

    p50: float | None
    p99: float | None
    samples: float
    note: str = ""


def lag_buckets(snapshot: Mapping[str, Any] | None) -> list[Bucket] | None:
    if snapshot is None:
        return None
    scheduler = snapshot.get("scheduler")
    if not isinstance(scheduler, Mapping):
        return None
    return parse_buckets(scheduler.get("lag_seconds_buckets"))


def window_lag(start: Mapping[str, Any] | None, end: Mapping[str, Any] | None) -> LagQuantiles:
    """p50/p99 scheduler lag between two ``daemon.json`` snapshots."""
    first, last = lag_buckets(start), lag_buckets(end)
    if last is None:
        return LagQuantiles(None, None, 0, "daemon.json has no scheduler lag histogram")
    if first is None:
        return LagQuantiles(None, None, 0, "no daemon.json lag histogram at window start")
    delta = window_buckets(first, last)
    if delta is None:
        return LagQuantiles(None, None, 0, "lag histograms of the two snapshots do not match")
    samples = max(count for _, count in delta)
    p50, p99 = histogram_quantile(0.5, delta), histogram_quantile(0.99, delta)
    if math.isnan(p50) or math.isnan(p99):
        return LagQuantiles(None, None, samples, "no scheduler lag samples in the window")
    return LagQuantiles(p50, p99, samples)
