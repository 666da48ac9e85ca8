"""Paired bootstrap against a brute-force enumeration and the normal approximation."""
import itertools
import math

import numpy as np
import pytest

from nnunet_pdddpm.evaluation.paired import paired_difference


def test_mean_and_interval_match_the_exhaustive_bootstrap_distribution():
    a = np.array([0.70, 0.80, 0.75, 0.60])
    b = np.array([0.72, 0.85, 0.74, 0.66])
    d = b - a
    # every one of the 4**4 equally likely resamples, exactly
    means = np.sort([np.mean(d[list(idx)]) for idx in itertools.product(range(4), repeat=4)])
    result = paired_difference(a, b, num_resamples=200000, seed=1)
    assert result["mean"] == pytest.approx(d.mean(), abs=1e-15) and result["n"] == 4
    assert result["low"] == pytest.approx(np.percentile(means, 2.5), abs=2e-3)
    assert result["high"] == pytest.approx(np.percentile(means, 97.5), abs=2e-3)


def test_interval_width_follows_the_standard_error_for_many_cases():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 0.9, 400)
    b = a + rng.normal(0.01, 0.05, 400)
    r = paired_difference(a, b)
    se = np.std(b - a) / math.sqrt(400)
    assert r["high"] - r["low"] == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert r["low"] < r["mean"] < r["high"]


def test_non_finite_pairs_are_left_out_and_all_nan_gives_nan():
    r = paired_difference([0.5, np.nan, 0.7], [0.6, 0.9, np.inf])
    assert r["n"] == 1 and r["mean"] == pytest.approx(0.1) and r["low"] == r["high"] == pytest.approx(0.1)
    empty = paired_difference([np.nan], [1.0])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["low"])
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])
