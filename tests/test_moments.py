"""Running moments: one value at a time and merged, against numpy on the same data."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from rtopt.streams import RunningMoments

DATA = np.random.default_rng(11).normal(1e6, 3.0, size=1_000)  # a large mean: a naive sum of squares cancels


def updated(values) -> RunningMoments:
    moments = RunningMoments()
    for x in values:
        moments.update(float(x))
    return moments


@pytest.mark.parametrize("ddof", [0, 1])
def test_updates_give_numpys_mean_variance_and_std(ddof: int) -> None:
    moments = updated(DATA)
    assert moments.n == DATA.size
    assert moments.mean == pytest.approx(DATA.mean(), rel=1e-15)
    assert moments.variance(ddof) == pytest.approx(DATA.var(ddof=ddof), rel=1e-9)
    assert moments.std(ddof) == pytest.approx(DATA.std(ddof=ddof), rel=1e-9)


def test_a_batch_gives_what_its_values_one_at_a_time_give() -> None:
    batch, one_by_one = RunningMoments.of(DATA), updated(DATA)
    assert batch.n == one_by_one.n
    assert batch.mean == pytest.approx(one_by_one.mean, rel=1e-15)
    assert batch.m2 == pytest.approx(one_by_one.m2, rel=1e-9)


@pytest.mark.parametrize("cut", [0, 1, 2, 500, 999, 1_000])
def test_merging_two_parts_is_updating_with_their_concatenation(cut: int) -> None:
    merged, rest = updated(DATA[:cut]), updated(DATA[cut:])
    merged.merge(rest)
    whole = updated(DATA)
    assert merged.n == whole.n
    assert merged.mean == pytest.approx(whole.mean, rel=1e-15)
    assert merged.variance() == pytest.approx(whole.variance(), rel=1e-9)
    assert rest == updated(DATA[cut:])  # the merged-in part is left as it was


def test_merging_nothing_changes_nothing_and_a_variance_needs_more_values_than_ddof() -> None:
    moments = updated([2.0, 4.0])
    moments.merge(RunningMoments())
    assert (moments.n, moments.mean, moments.m2) == (2, 3.0, 2.0)
    assert (moments.variance(ddof=2), updated([5.0]).variance(), RunningMoments().std(ddof=0)) == (0.0, 0.0, 0.0)


def test_encoded_as_count_mean_and_squared_deviations() -> None:
    moments = updated([1.0, 2.0, 4.0])
    assert msgspec.json.decode(msgspec.json.encode(moments)) == [3, moments.mean, moments.m2]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(moments), type=RunningMoments) == moments
