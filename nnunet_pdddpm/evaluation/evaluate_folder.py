"""Evaluate a folder of predictions against a folder of references (WMH-challenge metrics).

Every reference ``CASE{file_ending}`` is paired with ``pred_dir/CASE{file_ending}`` and,
when given, ``unc_dir/CASE_uncertainty{file_ending}`` (float map, same grid) and
``prob_dir/CASE.npz`` (nnU-Net's ``--save_probabilities`` output: key ``probabilities``,
shape (K, z, y, x), channel 0 = background). Prediction files without a reference are
ignored, so keep other maps out of the prediction folder. With ``exclude_dir``, every case also
needs ``exclude_dir/CASE{file_ending}`` (same grid; nonzero = excluded, e.g. WMH's "other pathology"
masks kept by ``nnunet_pdddpm_convert_wmh2017``): those voxels are set to background in the reference
and the prediction before every metric, the challenge's rule for its label 2 (``WMH_METRICS.md``).

All files are checked (presence, size, geometry) from their headers, then for completeness, finite
values and sign (label maps and uncertainty maps are never negative) in one pass over their stored voxels
(SimpleITK reads a truncated file's missing part and NaN/inf as zeros), before any metric is computed;
label maps must hold integers only, probability files the contract of
:mod:`nnunet_pdddpm.probability_files`. Problems raise :class:`~nnunet_pdddpm.errors.PDDDPMUserError`
with one sentence naming the case, and a summary whose figures leave their range is never returned.
Metrics per case and label come from :func:`~nnunet_pdddpm.evaluation.case_metrics.evaluate_case`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.evaluation.case_metrics import (
    PROBABILITY_METRICS,
    SEGMENTATION_METRICS,
    UNCERTAINTY_METRICS,
    evaluate_case,
)
from nnunet_pdddpm.evaluation.surface import Geometry
from nnunet_pdddpm.image_integrity import IncompleteImageError, grid_difference, read_image_header, scan_voxels
from nnunet_pdddpm.output_names import UNCERTAINTY_SUFFIX
from nnunet_pdddpm.probability_files import read_probabilities

__all__ = ["evaluate_folders", "UNCERTAINTY_SUFFIX"]

logger = logging.getLogger(__name__)

# The range of every figure a summary may hold (NaN aside: an empty mask has no HD95, no lesion precision).
_FIGURE_RANGES = {"dice": (0, 1), "jaccard": (0, 1), "hd95": (0, np.inf), "lesion_recall": (0, 1),
                  "lesion_precision": (0, 1), "lesion_f1": (0, 1), "avd": (0, np.inf), "ece": (0, 1),
                  "brier": (0, 1), "uncertainty_auroc": (0, 1), "mean_uncertainty": (0, np.inf)}


@dataclass(frozen=True)
class _CaseFiles:
    case: str
    reference: Path
    prediction: Path
    uncertainty: Path | None
    probabilities: Path | None
    exclusion: Path | None = None


def _pair_cases(
    ref_dir: Path, pred_dir: Path, unc_dir: Path | None, prob_dir: Path | None, file_ending: str,
    exclude_dir: Path | None = None,
) -> tuple[list[_CaseFiles], dict[str, list[str]]]:
    """Pair reference cases with their files; returns (complete cases, {case: missing file names})."""
    for name, folder in (("reference", ref_dir), ("prediction", pred_dir), ("uncertainty", unc_dir),
                         ("probability", prob_dir), ("exclusion", exclude_dir)):
        if folder is not None and not folder.is_dir():
            raise PDDDPMUserError(f"The {name} folder {folder} does not exist or is not a folder.")
    cases = sorted(f.name[: -len(file_ending)] for f in ref_dir.iterdir()
                   if f.name.endswith(file_ending) and not f.name.startswith("."))
    if not cases:
        raise PDDDPMUserError(f"The reference folder {ref_dir} has no '*{file_ending}' file; check -file_ending.")
    complete, missing = [], {}
    for case in cases:
        files = _CaseFiles(
            case,
            ref_dir / f"{case}{file_ending}",
            pred_dir / f"{case}{file_ending}",
            None if unc_dir is None else unc_dir / f"{case}{UNCERTAINTY_SUFFIX}{file_ending}",
            None if prob_dir is None else prob_dir / f"{case}.npz",
            None if exclude_dir is None else exclude_dir / f"{case}{file_ending}",
        )
        absent = [p.name for p in (files.prediction, files.uncertainty, files.probabilities, files.exclusion)
                  if p is not None and not p.is_file()]
        if absent:
            missing[case] = absent
        else:
            complete.append(files)
    n_orphans = len({f.name[: -len(file_ending)] for f in pred_dir.iterdir() if f.name.endswith(file_ending)}
                    - set(cases))
    if n_orphans > 0:
        logger.info("%d file(s) in %s have no reference and are not evaluated", n_orphans, pred_dir)
    return complete, missing


def _check_same_grid(case: str, role: str, reference: sitk.ImageFileReader, other: sitk.ImageFileReader) -> None:
    """Raise if ``other`` (the prediction or uncertainty map) is not on the reference's grid."""
    difference = grid_difference(reference, other)
    if difference is not None:
        name, other_value, ref_value = difference
        raise PDDDPMUserError(f"Case '{case}': the {role}'s {name} {other_value} differs from the reference's "
                              f"{ref_value}; it must be on the reference's grid.")


def _check_voxels(path: Path, case: str, role: str) -> None:
    """Raise if ``path`` is truncated or damaged or holds NaN/inf values (which SimpleITK would read as zeros)."""
    try:
        scan = scan_voxels(str(path))
    except IncompleteImageError as e:
        raise PDDDPMUserError(f"Case '{case}': the {role} {path} is incomplete: {e}; replace it with a complete "
                              f"file.") from None
    except RuntimeError as e:
        raise PDDDPMUserError(f"Cannot read {path} as an image: {str(e).strip().splitlines()[-1]}") from None
    if scan.n_non_finite:
        raise PDDDPMUserError(f"Case '{case}': the {role} {path} holds NaN or infinite values ({scan.n_non_finite} of "
                              f"{scan.n_voxels} voxels); replace it.")
    if scan.minimum is not None and scan.minimum < 0:  # labels and uncertainties are never negative
        what = "an uncertainty map" if role == "uncertainty map" else "a label map"
        raise PDDDPMUserError(f"Case '{case}': the {role} {path} holds negative values (down to {scan.minimum:.4g}), "
                              f"impossible in {what}; replace it.")


def _read_label_map(path: Path, case: str, role: str) -> np.ndarray:
    """Integer label array (int64); a float file must hold whole numbers only.

    A probability or soft map given as prediction is refused rather than thresholded: which threshold, and
    whether 0.7 means label 1, is the user's decision (the WMH challenge's own script binarises at 0.5).
    """
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if not np.issubdtype(array.dtype, np.floating):
        return array.astype(np.int64, copy=False)
    fractional = array != np.round(array)
    if fractional.any():
        example = float(array[fractional][0])
        raise PDDDPMUserError(f"Case '{case}': the {role} {path.name} holds non-integer values "
                              f"({int(fractional.sum())} voxels, e.g. {example:.4g}); expected a label map, so "
                              f"threshold soft maps first (the WMH challenge binarises at 0.5).")
    return array.astype(np.int64)


def _check_values(case: str, role: str, array: np.ndarray, allowed: set[int]) -> None:
    unexpected = sorted(set(np.unique(array).tolist()) - allowed)
    if unexpected:
        raise PDDDPMUserError(
            f"Case '{case}': the {role} holds label(s) {unexpected} outside the allowed set {sorted(allowed)}; "
            f"pass the dataset's labels with -l."
        )


def _read_probabilities(path: Path, case: str, shape: tuple[int, ...], labels: Sequence[int]) -> np.ndarray:
    """(K, *shape) float array from nnU-Net's npz; a 2D case may carry nnU-Net's singleton z axis."""
    probabilities = read_probabilities(path)
    if len(shape) == 2 and probabilities.ndim == 4 and probabilities.shape[1] == 1:
        probabilities = probabilities[:, 0]
    if probabilities.shape[1:] != shape or probabilities.shape[0] <= max(labels):
        raise PDDDPMUserError(
            f"Case '{case}': probabilities have shape {probabilities.shape}, expected (K > {max(labels)}, *{shape})."
        )
    return probabilities


def _discover_labels(cases: Sequence[_CaseFiles], excluded: set[int]) -> list[int]:
    """Foreground labels present in any reference or prediction (used when no label set is given)."""
    found: set[int] = set()
    for files in cases:
        for role, path in (("reference", files.reference), ("prediction", files.prediction)):
            found |= set(np.unique(_read_label_map(path, files.case, role)).tolist())
    return sorted(found - excluded - {0})


def _summarise(per_case: list[dict[str, Any]], labels: Sequence[int], metric_names: Sequence[str]) -> tuple[dict, dict]:
    """Means over cases (NaN cases left out) and how many cases were NaN, as ``{label: {metric: ...}}``."""
    mean: dict[str, dict[str, float]] = {}
    n_nan: dict[str, dict[str, int]] = {}
    for label in map(str, labels):
        mean[label], n_nan[label] = {}, {}
        for name in metric_names:
            values = np.array([case["metrics"][label][name] for case in per_case], dtype=np.float64)
            finite = values[~np.isnan(values)]
            mean[label][name] = float(finite.mean()) if finite.size else float("nan")
            n_nan[label][name] = int(values.size - finite.size)
    return mean, n_nan


def evaluate_folders(
    ref_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    unc_dir: str | os.PathLike | None = None,
    prob_dir: str | os.PathLike | None = None,
    labels: Sequence[int] | None = None,
    file_ending: str = ".nii.gz",
    ignore_label: int | None = None,
    exclude_label: int | None = None,
    allow_missing: bool = False,
    show_progress: bool = True,
    exclude_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate every reference case; returns the summary dictionary written as ``summary.json``.

    ``labels``: foreground labels, each evaluated as a binary mask; None = every nonzero
    value found in the references and predictions (one extra read of each file). A label
    outside ``{0} | labels | {ignore_label, exclude_label}`` raises. ``exclude_label`` is
    WMH's "other pathology" label (2 in the challenge) and ``ignore_label`` nnU-Net's
    dataset.json ignore label; both remove the voxels where the reference has that value.
    ``exclude_dir``: a folder of masks ``CASE{file_ending}`` whose nonzero voxels are removed the same
    way (the reference and the prediction are background there for every metric).
    Missing prediction (or uncertainty/probability) files raise, unless ``allow_missing``,
    in which case those cases are listed under ``"missing_cases"``.

    Layout: ``labels``, ``n_cases``, ``missing_cases``, ``metric_per_case`` (list of
    ``{"case", "reference_file", "prediction_file", "uncertainty_file", "probability_file",
    "exclusion_file", "metrics": {label: {metric: value}}}``), ``mean`` (``{label: {metric: nanmean}}``),
    ``foreground_mean`` (``{metric: mean over the labels}``) and ``n_nan`` (``{label: {metric: number of NaN
    cases}}``). Label keys are strings (JSON).
    """
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    unc_dir = None if unc_dir is None else Path(unc_dir)
    prob_dir = None if prob_dir is None else Path(prob_dir)
    exclude_dir = None if exclude_dir is None else Path(exclude_dir)
    excluded = {v for v in (ignore_label, exclude_label) if v is not None}
    labels = _checked_labels(labels, excluded)
    cases, missing = _pair_cases(ref_dir, pred_dir, unc_dir, prob_dir, file_ending, exclude_dir)
    if missing and not allow_missing:
        listed = "; ".join(f"{case} ({', '.join(names)})" for case, names in missing.items())
        raise PDDDPMUserError(f"{len(missing)} case(s) lack files: {listed}; pass --allow_missing to skip them.")
    geometries = _checked_inputs(cases)
    if labels is None:
        labels = _discover_labels(cases, excluded)
    metric_names = list(SEGMENTATION_METRICS)
    metric_names += list(PROBABILITY_METRICS) if prob_dir is not None else []
    metric_names += list(UNCERTAINTY_METRICS) if unc_dir is not None else []
    per_case = []
    for files in tqdm(cases, desc="evaluating", unit="case", disable=not show_progress):
        per_case.append(_evaluate_files(files, labels, excluded, geometries[files.case]))
    _check_figures(per_case)
    mean, n_nan = _summarise(per_case, labels, metric_names)
    foreground_mean = {name: _nanmean([mean[str(label)][name] for label in labels]) for name in metric_names}
    return {
        "reference_folder": str(ref_dir),
        "prediction_folder": str(pred_dir),
        "file_ending": file_ending,
        "labels": list(labels),
        "ignore_label": ignore_label,
        "exclude_label": exclude_label,
        "exclude_folder": None if exclude_dir is None else str(exclude_dir),
        "metric_names": metric_names,
        "n_cases": len(per_case),
        "missing_cases": sorted(missing),
        "metric_per_case": per_case,
        "mean": mean,
        "foreground_mean": foreground_mean,
        "n_nan": n_nan,
    }


def _checked_labels(labels: Sequence[int] | None, excluded: set[int]) -> list[int] | None:
    """The requested foreground labels, sorted; None stays None (found in the files later)."""
    if labels is None:
        return None
    labels = sorted({int(v) for v in labels})
    if not labels or min(labels) < 1 or excluded & set(labels):
        raise PDDDPMUserError(f"Labels {labels} must be positive foreground labels other than {sorted(excluded)}.")
    return labels


def _checked_inputs(cases: list) -> dict[str, Geometry]:
    """Every case's files on the reference's grid, then every file's stored voxels readable and finite, before
    any metric is computed; returns each case's reference geometry."""
    geometries: dict[str, Geometry] = {}
    for files in cases:
        reference = read_image_header(files.reference)
        _check_same_grid(files.case, "prediction", reference, read_image_header(files.prediction))
        if files.uncertainty is not None:
            _check_same_grid(files.case, "uncertainty map", reference, read_image_header(files.uncertainty))
        if files.exclusion is not None:
            _check_same_grid(files.case, "exclusion mask", reference, read_image_header(files.exclusion))
        geometries[files.case] = Geometry(reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())
    for files in cases:
        for role, path in (("reference", files.reference), ("prediction", files.prediction),
                           ("uncertainty map", files.uncertainty), ("exclusion mask", files.exclusion)):
            if path is not None:
                _check_voxels(path, files.case, role)
    return geometries


def _evaluate_files(files, labels: list[int], excluded: set[int], geometry: Geometry) -> dict[str, Any]:
    """One case's entry of ``metric_per_case``: its files read, their label values checked, its metrics."""
    allowed = {0, *labels, *excluded}
    reference = _read_label_map(files.reference, files.case, "reference")
    prediction = _read_label_map(files.prediction, files.case, "prediction")
    _check_values(files.case, "reference", reference, allowed)
    _check_values(files.case, "prediction", prediction, allowed)
    uncertainty = None
    if files.uncertainty is not None:
        uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(str(files.uncertainty))).astype(np.float64)
    probabilities = None
    if files.probabilities is not None and labels:
        probabilities = _read_probabilities(files.probabilities, files.case, reference.shape, labels)
    excluded_mask = None
    if files.exclusion is not None:
        excluded_mask = _read_label_map(files.exclusion, files.case, "exclusion mask") != 0
    metrics = evaluate_case(reference, prediction, labels, geometry, excluded, probabilities, uncertainty,
                            excluded_mask)
    return {
        "case": files.case,
        "reference_file": str(files.reference),
        "prediction_file": str(files.prediction),
        "uncertainty_file": None if files.uncertainty is None else str(files.uncertainty),
        "probability_file": None if files.probabilities is None else str(files.probabilities),
        "exclusion_file": None if files.exclusion is None else str(files.exclusion),
        "metrics": {str(label): values for label, values in metrics.items()},
    }


def _check_figures(per_case: list[dict[str, Any]]) -> None:
    """The inputs' contracts keep every figure in its range; this is the last guard that no impossible number
    (a negative mean uncertainty, a Dice above 1, an infinite calibration error) reaches a summary."""
    for case in per_case:
        for label, values in case["metrics"].items():
            for name, value in values.items():
                low, high = _FIGURE_RANGES.get(name, (-np.inf, np.inf))
                if not (np.isnan(value) or (low <= value <= high and np.isfinite(value))):
                    raise RuntimeError(f"{name} of case {case['case']}, label {label} is {value}, outside "
                                       f"[{low}, {high}]: a bug in the metric, please report it with this case.")


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (nnU-Net's ``foreground_mean``: every label weighs the same), NaN if none."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
