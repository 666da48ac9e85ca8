"""Calibration of foreground probabilities and quality of an uncertainty map.

Inputs are arrays of any one shape, flattened; callers drop voxels that are not evaluated
(an excluded or ignored reference label) before calling. ``probabilities`` are foreground
probabilities in [0, 1] (one channel of nnU-Net's softmax, channel 0 = background);
``reference`` is the binary ground truth; ``uncertainty`` is any real-valued map where larger
means less certain (the PD-DDPM ensemble's variance, an entropy, ...).

- ECE uses the reliability-diagram form on the foreground probability: ``n_bins`` equal-width
  bins over [0, 1] (bin i holds i/n <= p < (i+1)/n, the last bin also holds p = 1), and
  ECE = sum_i (n_i / N) * |mean(reference in bin i) - mean(p in bin i)|; empty bins add 0.
- Brier score = mean((p - reference)^2).
- Uncertainty AUROC: how well the uncertainty ranks misclassified voxels above correct ones,
  P(u_error > u_correct) + 0.5 P(tie), from the Mann-Whitney rank-sum with average ranks for
  ties. 0.5 is chance; NaN when every voxel is correct or every voxel is wrong.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["expected_calibration_error", "brier_score", "uncertainty_auroc", "mean_uncertainty"]


def _flat_pair(values: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64).ravel()
    reference = np.asarray(reference).astype(bool, copy=False).ravel()
    if values.shape != reference.shape:
        raise ValueError(f"got {values.size} values but {reference.size} reference voxels")
    return values, reference


def _check_probabilities(probabilities: np.ndarray) -> None:
    if probabilities.size and (np.nanmin(probabilities) < 0 or np.nanmax(probabilities) > 1):
        raise ValueError("probabilities must lie in [0, 1]")


def expected_calibration_error(probabilities: np.ndarray, reference: np.ndarray, n_bins: int = 10) -> float:
    """ECE of foreground ``probabilities`` vs binary ``reference``, ``n_bins`` equal-width bins; NaN if empty."""
    p, y = _flat_pair(probabilities, reference)
    _check_probabilities(p)
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    if p.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.digitize(p, edges[1:-1])  # bin i: edges[i] <= p < edges[i + 1]; p = 1 lands in the last bin
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y.astype(np.float64), minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / p.size)  # sum_i n_i/N |mean_y - mean_p| = sum_i |sum_y - sum_p| / N


def brier_score(probabilities: np.ndarray, reference: np.ndarray) -> float:
    """Mean of (foreground probability - binary reference)^2, in [0, 1]; NaN if empty."""
    p, y = _flat_pair(probabilities, reference)
    _check_probabilities(p)
    if p.size == 0:
        return float("nan")
    return float(np.mean((p - y) ** 2))


def uncertainty_auroc(uncertainty: np.ndarray, errors: np.ndarray) -> float:
    """AUROC of ``uncertainty`` for detecting misclassified voxels (``errors`` True = prediction != reference).

    Mann-Whitney: (sum of the average ranks of error voxels - n_err (n_err + 1) / 2) / (n_err n_ok).
    NaN when there is no error voxel or no correct voxel.
    """
    u, err = _flat_pair(uncertainty, errors)
    n_err = int(err.sum())
    n_ok = err.size - n_err
    if n_err == 0 or n_ok == 0:
        return float("nan")
    ranks = rankdata(u, method="average")
    return float((ranks[err].sum() - n_err * (n_err + 1) / 2.0) / (n_err * n_ok))


def mean_uncertainty(uncertainty: np.ndarray) -> float:
    """Mean of the uncertainty over the given voxels; NaN if there are none."""
    u = np.asarray(uncertainty, dtype=np.float64)
    return float(u.mean()) if u.size else float("nan")
