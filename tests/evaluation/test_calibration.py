"""ECE, Brier and uncertainty AUROC against explicit loops (AUROC by counting pairs)."""
import math

import numpy as np
import pytest

from nnunet_pdddpm.evaluation.calibration import (
    brier_score,
    expected_calibration_error,
    mean_uncertainty,
    uncertainty_auroc,
)


def brute_ece(p, y, n_bins):
    p, y = list(np.ravel(p)), list(np.ravel(y))
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for i in range(n_bins):
        members = [k for k in range(len(p))
                   if edges[i] <= p[k] < edges[i + 1] or (i == n_bins - 1 and p[k] == edges[-1])]
        if members:
            mean_p = sum(p[k] for k in members) / len(members)
            mean_y = sum(float(y[k]) for k in members) / len(members)
            total += len(members) / len(p) * abs(mean_y - mean_p)
    return total


def brute_auroc(u, err):
    u, err = np.ravel(u), np.ravel(err)
    wins, pairs = 0.0, 0
    for a in range(len(u)):
        for b in range(len(u)):
            if err[a] and not err[b]:
                pairs += 1
                wins += 1.0 if u[a] > u[b] else 0.5 if u[a] == u[b] else 0.0
    return wins / pairs


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
@pytest.mark.parametrize("seed", range(4))
def test_ece_and_brier_match_loops(seed, n_bins):
    rng = np.random.default_rng(seed)
    p = rng.random((3, 5, 6))
    p.flat[:4] = [0.0, 1.0, 0.5, 0.2]  # edge values: p = 1 belongs to the last bin
    y = rng.random(p.shape) < p
    assert expected_calibration_error(p, y, n_bins) == pytest.approx(brute_ece(p, y, n_bins))
    assert brier_score(p, y) == pytest.approx(sum((a - float(b)) ** 2 for a, b in zip(p.ravel(), y.ravel())) / p.size)


def test_perfect_and_worst_calibration():
    y = np.array([0, 1, 1, 0], bool)
    assert expected_calibration_error(y.astype(float), y) == 0.0 and brier_score(y.astype(float), y) == 0.0
    assert expected_calibration_error(1.0 - y, y) == 1.0 and brier_score(1.0 - y, y) == 1.0
    assert math.isnan(expected_calibration_error(np.array([]), np.array([], bool)))
    with pytest.raises(ValueError):
        brier_score(np.array([1.5]), np.array([True]))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pair_counting(seed):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 4, size=(4, 6)).astype(float)  # many ties
    err = rng.random(u.shape) < 0.3
    assert uncertainty_auroc(u, err) == pytest.approx(brute_auroc(u, err))
    u2 = rng.random((2, 3, 5))
    err2 = rng.random(u2.shape) < 0.5
    assert uncertainty_auroc(u2, err2) == pytest.approx(brute_auroc(u2, err2))


def test_auroc_edge_cases_and_mean():
    u = np.array([0.1, 0.9, 0.2, 0.8])
    assert uncertainty_auroc(u, np.array([0, 1, 0, 1], bool)) == 1.0
    assert uncertainty_auroc(u, np.array([1, 0, 1, 0], bool)) == 0.0
    assert uncertainty_auroc(np.ones(4), np.array([1, 0, 1, 0], bool)) == 0.5
    assert math.isnan(uncertainty_auroc(u, np.zeros(4, bool)))
    assert math.isnan(uncertainty_auroc(u, np.ones(4, bool)))
    assert mean_uncertainty(u) == pytest.approx(0.5)
    assert math.isnan(mean_uncertainty(np.array([])))
