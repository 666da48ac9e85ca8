"""Voxel overlap of two binary masks: Dice, Jaccard and voxel F1.

Conventions: ``reference`` and ``prediction`` are arrays of one shape (2D or 3D, any axis
order); nonzero means foreground and every voxel counts. When both masks are empty the ratio
is 0/0 and the result is NaN, as in nnU-Net's ``compute_metrics``: a case without the
structure says nothing about overlap, so callers count such cases (``n_nan``) instead of
scoring them 1 or 0.

Definitions follow the WMH challenge (``hjkuijf/wmhchallenge``, ``evaluation.py``); Jaccard
is not in that script but the PD-DDPM paper reports it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["dice", "jaccard", "voxel_f1"]


def _counts(reference: np.ndarray, prediction: np.ndarray) -> tuple[int, int, int]:
    """Return (|A∩B|, |A|, |B|) for reference A and prediction B."""
    reference = np.asarray(reference).astype(bool, copy=False)
    prediction = np.asarray(prediction).astype(bool, copy=False)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    return int(np.count_nonzero(reference & prediction)), int(reference.sum()), int(prediction.sum())


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice = 2|A∩B| / (|A| + |B|), in [0, 1]; NaN when both masks are empty."""
    intersection, n_ref, n_pred = _counts(reference, prediction)
    if n_ref + n_pred == 0:
        return float("nan")
    return 2.0 * intersection / (n_ref + n_pred)


def jaccard(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Jaccard (IoU) = |A∩B| / |A∪B|, in [0, 1]; NaN when both masks are empty."""
    intersection, n_ref, n_pred = _counts(reference, prediction)
    union = n_ref + n_pred - intersection
    if union == 0:
        return float("nan")
    return intersection / union


def voxel_f1(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Voxel-wise F1 = 2PR / (P + R) with P, R the voxel precision and recall.

    For binary masks this equals :func:`dice` (both are 2TP / (2TP + FP + FN)); it has its own
    name so that it is never mistaken for the paper's "F1" column, which is the lesion-wise F1
    (:func:`nnunet_pdddpm.evaluation.lesions.lesion_f1`). NaN when both masks are empty.
    """
    return dice(reference, prediction)
