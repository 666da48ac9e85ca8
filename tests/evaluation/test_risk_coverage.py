"""AURC against a brute-force computation: every ordering of tied cases, selective risk at every coverage."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnunet_pdddpm.evaluation.risk_coverage import aurc


def brute_force_aurc(uncertainty, risk) -> float:
    """Mean over all orderings consistent with the scores (ties in any order) of the mean selective risk."""
    n = len(risk)
    orders = [p for p in itertools.permutations(range(n))
              if all(uncertainty[p[i]] <= uncertainty[p[i + 1]] for i in range(n - 1))]
    values = []
    for order in orders:
        selective = [sum(risk[j] for j in order[:k]) / k for k in range(1, n + 1)]
        values.append(sum(selective) / n)
    return float(np.mean(values))


@pytest.mark.parametrize("seed", range(5))
def test_aurc_equals_brute_force_with_and_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    risk = rng.random(6).tolist()
    uncertainty = rng.integers(0, 3 if seed % 2 else 100, 6).astype(float).tolist()  # odd seeds: many ties
    assert aurc(uncertainty, risk) == pytest.approx(brute_force_aurc(uncertainty, risk), abs=1e-12)


def test_ranking_by_the_true_risk_is_optimal_and_reversed_is_worst() -> None:
    risk = [0.1, 0.5, 0.2, 0.9, 0.0]
    best, worst = aurc(risk, risk), aurc([-r for r in risk], risk)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert best - 1e-12 <= aurc(rng.random(5), risk) <= worst + 1e-12
    assert aurc([0.0] * 5, risk) == pytest.approx(np.mean(risk))  # no ranking: the overall risk


def test_non_finite_pairs_are_dropped() -> None:
    assert aurc([0.1, np.nan, 0.3], [0.2, 0.9, 0.4]) == pytest.approx(aurc([0.1, 0.3], [0.2, 0.4]))
    assert np.isnan(aurc([np.nan], [0.1]))
