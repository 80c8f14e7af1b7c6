"""Scheduler lag: how late checks start against their schedule, as a cumulative histogram.

Lag is what says the daemon itself is overloaded, before any check suffers: a healthy
scheduler starts checks within milliseconds of their due time. The buckets are Prometheus
style (cumulative counts per upper bound), so a reader can diff two snapshots and compute the
quantiles of any window with ``quantile``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

BOUNDS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class LagHistogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)  # per bucket, the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, lag: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, lag)] += 1
        self.count += 1
        self.sum += lag

    def cumulative(self) -> list[int]:
        out, total = [], 0
        for n in self.counts:
            total += n
            out.append(total)
        return out

    def to_json(self) -> dict[str, object]:
        bounds: list[float | str] = [*BOUNDS, "+Inf"]
        return {
            "lag_seconds_buckets": [[b, c] for b, c in zip(bounds, self.cumulative(), strict=True)],
            "lag_seconds_sum": round(self.sum, 6),
            "lag_seconds_count": self.count,
        }


def quantile(q: float, cumulative: Sequence[int], bounds: Sequence[float] = BOUNDS) -> float:
    """The q-quantile of a cumulative histogram (``len(bounds) + 1`` counts, last +Inf).

    Linear inside the bucket, as Prometheus' histogram_quantile; NaN without observations,
    and the highest finite bound when the quantile falls in the +Inf bucket.
    """
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return math.nan
    rank = q * total
    i = bisect.bisect_left(cumulative, rank)
    if i >= len(bounds):
        return bounds[-1]
    lower = bounds[i - 1] if i > 0 else 0.0
    below = cumulative[i - 1] if i > 0 else 0
    inside = cumulative[i] - below
    if inside <= 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - below) / inside
