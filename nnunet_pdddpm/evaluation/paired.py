"""Paired differences between two methods on the same cases, with a percentile bootstrap interval.

One training run varies by about 0.02 Dice, so a claim "method B beats method A" needs the
difference per case (and seed) and its uncertainty, not two means side by side.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def paired_difference(a: Sequence[float], b: Sequence[float], num_resamples: int = 10000, level: float = 0.95,
                      seed: int = 0) -> dict[str, float]:
    """Mean of ``b - a`` over the pairs where both are finite, and its percentile bootstrap interval.

    Returns ``{"mean", "low", "high", "n"}``; NaN for all three values when no pair is finite. Pairs are
    resampled with replacement ``num_resamples`` times from a generator seeded with ``seed`` (reproducible).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length, got {a.shape} and {b.shape}")
    d = (b - a)[np.isfinite(a) & np.isfinite(b)]
    if d.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(num_resamples, d.size))].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "n": int(d.size)}
