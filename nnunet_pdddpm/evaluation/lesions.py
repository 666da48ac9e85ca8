"""Lesion-wise detection (recall, precision, F1) and absolute volume difference (AVD).

Source: ``hjkuijf/wmhchallenge``, ``evaluation.py`` (``getLesionDetection``, ``getAVD``),
restated in ``WMH_METRICS.md``. A lesion is a connected component with full connectivity
(26-neighbourhood in 3D, 8 in 2D, as SimpleITK's ``ConnectedComponent`` with
``FullyConnected=True``); a lesion is detected when it shares at least one voxel with the
other mask. Arrays: numpy, one shape, 2D or 3D; nonzero = foreground.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["connected_components", "detected_components", "undetected_components", "lesion_recall", "lesion_precision",
           "lesion_f1", "lesion_metrics", "avd"]


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the fully connected components of ``mask``: (int array of mask's shape, 0 = background; count)."""
    mask = np.asarray(mask).astype(bool, copy=False)
    labeled, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return labeled, int(n)


def detected_components(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """``source``'s labelled components, their count, and the labels of those sharing a voxel with ``target`` (a
    lesion is detected when it does): the one overlap rule of the lesion metrics and the lesion gate."""
    source = np.asarray(source).astype(bool, copy=False)
    target = np.asarray(target).astype(bool, copy=False)
    if source.shape != target.shape:
        raise ValueError(f"mask shapes differ: {source.shape} vs {target.shape}")
    labeled, n = connected_components(source)
    return labeled, n, np.unique(labeled[target & (labeled > 0)])


def undetected_components(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The voxels of ``source``'s components that share no voxel with ``target`` (bool, source's shape)."""
    labeled, _, hit = detected_components(source, target)
    return (labeled > 0) & ~np.isin(labeled, hit)


def _detected_fraction(source: np.ndarray, target: np.ndarray) -> float:
    """Fraction of ``source``'s components that overlap ``target``; 1.0 when ``source`` has none."""
    _, n, hit = detected_components(source, target)
    return 1.0 if n == 0 else len(hit) / n


def lesion_recall(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Reference lesions overlapping the prediction / reference lesions; 1.0 when the reference has none."""
    return _detected_fraction(reference, prediction)


def lesion_precision(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Predicted lesions overlapping the reference / predicted lesions; 1.0 when the prediction has none."""
    return _detected_fraction(prediction, reference)


def lesion_f1(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Lesion-wise F1 = 2PR / (P + R); 0.0 when P + R = 0. This is the paper's "F1" column."""
    return lesion_metrics(reference, prediction)["lesion_f1"]


def lesion_metrics(reference: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """The three lesion-wise scores as ``{"lesion_recall", "lesion_precision", "lesion_f1"}``."""
    recall = lesion_recall(reference, prediction)
    precision = lesion_precision(reference, prediction)
    f1 = 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)
    return {"lesion_recall": recall, "lesion_precision": precision, "lesion_f1": f1}


def avd(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Absolute volume difference in percent, |V_ref - V_pred| / V_ref * 100 (voxel counts); NaN when V_ref = 0."""
    reference = np.asarray(reference).astype(bool, copy=False)
    prediction = np.asarray(prediction).astype(bool, copy=False)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    v_ref = int(reference.sum())
    if v_ref == 0:
        return float("nan")
    return abs(v_ref - int(prediction.sum())) / v_ref * 100.0
