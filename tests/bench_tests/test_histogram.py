"""bench.histogram: Prometheus histogram_quantile semantics, and the window's scheduler lag."""

from __future__ import annotations

import math
from typing import Any

import pytest
from bench.histogram import (
    Bucket,
    histogram_quantile,
    parse_buckets,
    window_buckets,
    window_lag,
)
from hypothesis import given
from hypothesis import strategies as st

INF = math.inf
BUCKETS: list[Bucket] = [(0.1, 10), (0.2, 30), (0.5, 40), (INF, 40)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.25, 0.1),  # rank 10: the top of the first bucket, which starts at 0
        (0.5, 0.15),  # rank 20: halfway through (0.1, 0.2], which holds ranks 10..30
        (0.99, 0.2 + 0.3 * 0.96),  # rank 39.6 in (0.2, 0.5], which holds ranks 30..40
        (1.0, 0.5),
    ],
)
def test_interpolates_linearly_inside_the_bucket(q: float, expected: float) -> None:
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)


def test_rank_in_the_inf_bucket_gives_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.9, [(1.0, 5), (INF, 10)]) == 1.0


def test_first_bucket_with_a_bound_at_or_below_zero_returns_that_bound() -> None:
    assert histogram_quantile(0.25, [(-1.0, 5), (1.0, 10), (INF, 10)]) == -1.0


@pytest.mark.parametrize(
    "buckets",
    [
        [(1.0, 0), (INF, 0)],  # no observations
        [(1.0, 5), (2.0, 10)],  # no +Inf bucket
        [(INF, 5)],  # fewer than two buckets
        [],
    ],
)
def test_nan_when_no_quantile_exists(buckets: list[Bucket]) -> None:
    assert math.isnan(histogram_quantile(0.5, buckets))


def test_q_outside_zero_one_and_nan() -> None:
    assert histogram_quantile(-0.1, BUCKETS) == -INF
    assert histogram_quantile(1.1, BUCKETS) == INF
    assert math.isnan(histogram_quantile(math.nan, BUCKETS))


def test_q_zero() -> None:
    assert histogram_quantile(0.0, BUCKETS) == 0.0
    # 0/0 inside an empty first bucket: NaN, as in Prometheus
    assert math.isnan(histogram_quantile(0.0, [(1.0, 0), (2.0, 4), (INF, 4)]))


def test_order_of_the_buckets_does_not_matter() -> None:
    shuffled = [BUCKETS[2], BUCKETS[3], BUCKETS[0], BUCKETS[1]]
    assert histogram_quantile(0.5, shuffled) == histogram_quantile(0.5, BUCKETS)


def test_counts_that_decrease_are_raised_to_the_running_maximum() -> None:
    # (2.0, 8) is read as (2.0, 10): rank 5 is then inside the first bucket
    assert histogram_quantile(0.5, [(1.0, 10), (2.0, 8), (INF, 10)]) == pytest.approx(0.5)


def test_buckets_with_equal_bounds_are_merged() -> None:
    assert histogram_quantile(0.5, [(1.0, 2), (1.0, 3), (INF, 5)]) == pytest.approx(0.5)


@st.composite
def cumulative_histograms(draw: st.DrawFn) -> list[Bucket]:
    bounds = sorted(draw(st.sets(st.floats(0.0001, 100.0), min_size=1, max_size=8)))
    increments = draw(
        st.lists(st.integers(0, 50), min_size=len(bounds) + 1, max_size=len(bounds) + 1)
    )
    out: list[Bucket] = []
    total = 0
    for bound, inc in zip([*bounds, INF], increments, strict=True):
        total += inc
        out.append((bound, total))
    return out


@given(cumulative_histograms(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_quantiles_are_monotonic_and_within_the_finite_bounds(
    buckets: list[Bucket], q1: float, q2: float
) -> None:
    low, high = sorted((q1, q2))
    a, b = histogram_quantile(low, buckets), histogram_quantile(high, buckets)
    if buckets[-1][1] == 0:
        assert math.isnan(a)
        assert math.isnan(b)
        return
    highest_finite = buckets[-2][0]
    for value in (a, b):
        assert math.isnan(value) or 0.0 <= value <= highest_finite
    if not (math.isnan(a) or math.isnan(b)):
        assert a <= b + 1e-9


def test_parse_buckets_reads_daemon_json_shape() -> None:
    raw: Any = [[0.001, 10], [0.0025, 20], ["+Inf", 25]]
    assert parse_buckets(raw) == [(0.001, 10.0), (0.0025, 20.0), (INF, 25.0)]


@pytest.mark.parametrize(
    "raw",
    [None, [], "x", [[0.1]], [[0.1, "3"]], [["fast", 3]], [[0.1, True]], [[None, 1]], {"a": 1}],
)
def test_parse_buckets_rejects_other_shapes(raw: Any) -> None:
    assert parse_buckets(raw) is None


def test_window_buckets_is_the_difference_of_two_snapshots() -> None:
    start: list[Bucket] = [(0.1, 5), (INF, 7)]
    end: list[Bucket] = [(0.1, 12), (INF, 20)]
    assert window_buckets(start, end) == [(0.1, 7), (INF, 13)]


def test_window_buckets_refuses_other_bounds_or_a_reset() -> None:
    assert window_buckets([(0.1, 5), (INF, 7)], [(0.2, 6), (INF, 8)]) is None
    assert window_buckets([(0.1, 5), (INF, 7)], [(0.1, 1), (INF, 2)]) is None  # restarted


def _daemon_json(buckets: list[list[Any]]) -> dict[str, Any]:
    return {"pid": 1, "scheduler": {"behind": False, "lag_seconds_buckets": buckets}}


def test_window_lag_uses_only_the_observations_of_the_window() -> None:
    start = _daemon_json([[0.001, 10], [0.01, 10], ["+Inf", 10]])
    end = _daemon_json([[0.001, 60], [0.01, 110], ["+Inf", 110]])
    lag = window_lag(start, end)
    # window: 50 observations <= 1 ms, 50 in (1 ms, 10 ms]
    assert lag.p50 == pytest.approx(0.001)
    assert lag.p99 == pytest.approx(0.001 + 0.009 * 49 / 50)
    assert lag.samples == 100
    assert lag.note == ""


def test_window_lag_explains_why_it_has_no_value() -> None:
    same = _daemon_json([[0.001, 10], ["+Inf", 10]])
    assert window_lag(same, same).p50 is None
    assert "no scheduler lag samples" in window_lag(same, same).note
    assert "window start" in window_lag(None, same).note
    assert window_lag(same, None).p99 is None
    assert window_lag({"pid": 1}, {"pid": 1}).note
