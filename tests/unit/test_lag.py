"""LagHistogram and quantile: Prometheus-style cumulative buckets and their quantiles."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthd.engine.lag import BOUNDS, LagHistogram, quantile

EMPTY = [0] * (len(BOUNDS) + 1)


def cumulative_of(per_bucket: list[int]) -> list[int]:
    out, total = [], 0
    for n in per_bucket:
        total += n
        out.append(total)
    return out


def one_bucket(index: int, n: int) -> list[int]:
    """A cumulative histogram with ``n`` observations, all in bucket ``index``."""
    per_bucket = [0] * (len(BOUNDS) + 1)
    per_bucket[index] = n
    return cumulative_of(per_bucket)


# -- LagHistogram ---------------------------------------------------------------------------------


def test_new_histogram_is_empty() -> None:
    hist = LagHistogram()
    assert hist.count == 0
    assert hist.sum == 0.0
    assert hist.cumulative() == EMPTY


def test_observe_counts_each_value_in_the_bucket_of_its_upper_bound() -> None:
    hist = LagHistogram()
    for lag in (0.0, 0.001, 0.0011, 0.02, 60.0, 60.5, 3600.0):
        hist.observe(lag)
    per_bucket = [0] * (len(BOUNDS) + 1)
    per_bucket[0] = 2  # 0 and exactly 0.001: a bound is inclusive ("le")
    per_bucket[1] = 1  # 0.0011 <= 0.0025
    per_bucket[BOUNDS.index(0.025)] = 1
    per_bucket[BOUNDS.index(60.0)] = 1  # exactly the highest finite bound
    per_bucket[-1] = 2  # beyond every bound: +Inf
    assert hist.counts == per_bucket
    assert hist.count == 7
    assert hist.sum == pytest.approx(0.0 + 0.001 + 0.0011 + 0.02 + 60.0 + 60.5 + 3600.0)


def test_cumulative_is_non_decreasing_and_ends_with_the_count() -> None:
    hist = LagHistogram()
    for lag in (0.3, 0.0005, 7.0, 0.3, 100.0, 0.04):
        hist.observe(lag)
    cumulative = hist.cumulative()
    assert len(cumulative) == len(BOUNDS) + 1
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] == hist.count == 6
    assert cumulative[BOUNDS.index(0.05)] == 2  # 0.0005 and 0.04
    assert cumulative[BOUNDS.index(0.5)] == 4  # and the two 0.3


def test_to_json_has_cumulative_buckets_ending_in_inf_and_count_and_sum() -> None:
    hist = LagHistogram()
    for lag in (0.002, 0.002, 0.7, 90.0):
        hist.observe(lag)
    out = hist.to_json()
    assert json.loads(json.dumps(out)) == out  # plain JSON values only
    buckets = out["lag_seconds_buckets"]
    assert isinstance(buckets, list)
    assert [b for b, _ in buckets] == [*BOUNDS, "+Inf"]
    assert [c for _, c in buckets] == hist.cumulative()
    assert buckets[-1] == ["+Inf", 4]
    assert buckets[BOUNDS.index(0.0025)] == [0.0025, 2]
    assert buckets[BOUNDS.index(1.0)] == [1.0, 3]
    assert out["lag_seconds_count"] == 4
    assert out["lag_seconds_sum"] == pytest.approx(90.704)


def test_to_json_sum_is_rounded_to_microseconds() -> None:
    hist = LagHistogram()
    hist.observe(0.1234567891)
    assert hist.to_json()["lag_seconds_sum"] == 0.123457


# -- quantile -------------------------------------------------------------------------------------


def test_quantile_without_observations_is_nan() -> None:
    assert math.isnan(quantile(0.5, EMPTY))
    assert math.isnan(quantile(0.99, []))
    assert math.isnan(quantile(0.5, LagHistogram().cumulative()))


def test_quantile_interpolates_linearly_inside_a_bucket() -> None:
    inside = BOUNDS.index(0.25)  # the bucket (0.1, 0.25]
    cumulative = one_bucket(inside, 4)
    assert quantile(0.5, cumulative) == pytest.approx(0.1 + 0.15 * 2 / 4)
    assert quantile(0.25, cumulative) == pytest.approx(0.1 + 0.15 * 1 / 4)
    assert quantile(1.0, cumulative) == pytest.approx(0.25)


def test_quantile_in_the_first_bucket_starts_from_zero() -> None:
    cumulative = one_bucket(0, 10)
    assert quantile(0.5, cumulative) == pytest.approx(0.0005)
    assert quantile(0.0, cumulative) == 0.0


def test_quantile_across_buckets_uses_the_bucket_holding_the_rank() -> None:
    per_bucket = [0] * (len(BOUNDS) + 1)
    per_bucket[BOUNDS.index(0.01)] = 90  # (0.005, 0.01]
    per_bucket[BOUNDS.index(2.5)] = 10  # (1.0, 2.5]
    cumulative = cumulative_of(per_bucket)
    assert quantile(0.5, cumulative) == pytest.approx(0.005 + 0.005 * 50 / 90)
    assert quantile(0.95, cumulative) == pytest.approx(1.0 + 1.5 * 5 / 10)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert quantile(0.5, one_bucket(len(BOUNDS), 3)) == BOUNDS[-1]
    per_bucket = [0] * (len(BOUNDS) + 1)
    per_bucket[0], per_bucket[-1] = 99, 1
    cumulative = cumulative_of(per_bucket)
    assert quantile(0.99, cumulative) == pytest.approx(0.001)  # rank 99: still the first
    assert quantile(0.999, cumulative) == BOUNDS[-1]


def test_quantile_with_bounds_of_its_own() -> None:
    bounds = (1.0, 2.0)
    assert quantile(0.5, [0, 4, 4], bounds) == pytest.approx(1.5)
    assert quantile(0.9, [0, 0, 4], bounds) == 2.0
    assert math.isnan(quantile(0.5, [0, 0, 0], bounds))


def test_quantile_of_a_window_between_two_snapshots() -> None:
    """What Scheduler.review does: the difference of two cumulative snapshots is one too."""
    hist = LagHistogram()
    for _ in range(100):
        hist.observe(0.0001)
    before = hist.cumulative()
    for _ in range(10):
        hist.observe(3.0)
    window = [b - a for a, b in zip(before, hist.cumulative(), strict=True)]
    assert window[-1] == 10
    assert 2.5 < quantile(0.5, window) <= 5.0


per_bucket_counts = st.lists(
    st.integers(min_value=0, max_value=1000), min_size=len(BOUNDS) + 1, max_size=len(BOUNDS) + 1
).filter(any)
fractions = st.floats(min_value=0.0, max_value=1.0)


@given(per_bucket_counts, fractions, fractions)
def test_quantile_is_monotonic_in_q(per_bucket: list[int], q1: float, q2: float) -> None:
    cumulative = cumulative_of(per_bucket)
    low, high = sorted((q1, q2))
    a, b = quantile(low, cumulative), quantile(high, cumulative)
    assert not math.isnan(a)
    assert not math.isnan(b)
    assert a <= b
    assert 0.0 <= a <= BOUNDS[-1]
    assert 0.0 <= b <= BOUNDS[-1]


@given(
    st.lists(st.floats(min_value=0.0, max_value=59.0), min_size=1, max_size=50),
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
)
def test_quantile_lies_in_the_bucket_range_of_the_observations(lags: list[float], q: float) -> None:
    hist = LagHistogram()
    for lag in lags:
        hist.observe(lag)
    value = quantile(q, hist.cumulative())
    # never below the lower edge of the lowest bucket used, nor above the highest bound used
    lowest = min(lags)
    first = BOUNDS.index(next(b for b in BOUNDS if lowest <= b))
    floor = BOUNDS[first - 1] if first > 0 else 0.0
    ceiling = next(b for b in BOUNDS if max(lags) <= b)
    assert floor <= value <= ceiling
