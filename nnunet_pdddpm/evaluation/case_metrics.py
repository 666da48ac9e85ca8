"""All metrics of one case, per foreground label, from numpy arrays (no file handling).

Label handling (``WMH_METRICS.md``): each label is evaluated as a binary mask
(``reference == label``, ``prediction == label``). Voxels whose reference value is in
``excluded_values`` (WMH's "other pathology" label 2, or nnU-Net's ignore label) are not
evaluated: the prediction is set to background there and the reference is not the label
there, exactly the challenge's masking; the probability and uncertainty metrics skip them.
``excluded_mask`` marks such voxels directly (a converted dataset keeps label 2 in its own
mask folder, see :mod:`nnunet_pdddpm.datasets.wmh2017`) and is treated the same way.

Arrays are in SimpleITK's numpy order ((z, y, x) or (y, x)); ``probabilities`` is
(K, *shape) with channel 0 = background, so the foreground probability of label ``l`` is
``probabilities[l]``; ``uncertainty`` has the image's shape.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import SimpleITK as sitk

from nnunet_pdddpm.evaluation.calibration import (
    brier_score,
    expected_calibration_error,
    mean_uncertainty,
    uncertainty_auroc,
)
from nnunet_pdddpm.evaluation.lesions import avd, lesion_metrics
from nnunet_pdddpm.evaluation.overlap import dice, jaccard
from nnunet_pdddpm.evaluation.surface import Geometry, hd95

__all__ = ["SEGMENTATION_METRICS", "PROBABILITY_METRICS", "UNCERTAINTY_METRICS", "evaluate_case"]

SEGMENTATION_METRICS = ("dice", "jaccard", "hd95", "lesion_recall", "lesion_precision", "lesion_f1", "avd")
PROBABILITY_METRICS = ("ece", "brier")
UNCERTAINTY_METRICS = ("uncertainty_auroc", "mean_uncertainty")


def evaluate_case(
    reference: np.ndarray,
    prediction: np.ndarray,
    labels: Iterable[int],
    geometry: Geometry | sitk.Image | None = None,
    excluded_values: Iterable[int] = (),
    probabilities: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    excluded_mask: np.ndarray | None = None,
) -> dict[int, dict[str, float]]:
    """Metrics of one case: ``{label: {metric: value}}``.

    ``reference``/``prediction`` are integer label maps of one shape; ``geometry`` is the
    reference image's (for HD95 in mm). The probability metrics are present only when
    ``probabilities`` is given, the uncertainty metrics only when ``uncertainty`` is given.
    ``excluded_mask`` (bool, the image's shape): more voxels to exclude, like ``excluded_values``.
    """
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    excluded = np.isin(reference, list(excluded_values))
    if excluded_mask is not None:
        if np.shape(excluded_mask) != reference.shape:
            raise ValueError(f"excluded_mask shape {np.shape(excluded_mask)} differs from reference shape "
                             f"{reference.shape}")
        excluded |= np.asarray(excluded_mask, dtype=bool)
    valid = ~excluded
    results: dict[int, dict[str, float]] = {}
    for label in labels:
        ref = (reference == label) & valid
        pred = (prediction == label) & valid
        metrics = {
            "dice": dice(ref, pred),
            "jaccard": jaccard(ref, pred),
            "hd95": hd95(ref, pred, geometry),
            **lesion_metrics(ref, pred),
            "avd": avd(ref, pred),
        }
        if probabilities is not None:
            foreground = probabilities[label][valid]
            metrics["ece"] = expected_calibration_error(foreground, ref[valid])
            metrics["brier"] = brier_score(foreground, ref[valid])
        if uncertainty is not None:
            metrics["uncertainty_auroc"] = uncertainty_auroc(uncertainty[valid], (ref != pred)[valid])
            metrics["mean_uncertainty"] = mean_uncertainty(uncertainty[valid])
        results[int(label)] = {name: float(value) for name, value in metrics.items()}
    return results
