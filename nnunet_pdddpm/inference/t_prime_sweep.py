"""Automatic T': the T' with the best validation Dice, found by a sweep and stored next to the checkpoint.

The paper's optimum (T'=300 on WMH, Fig. 3) is dataset-specific: T' sets how much the pre-segmentation is
trusted. The forward noise at T' gives the hint's voxel log-odds 2 sqrt(ab) / (1 - ab) (80 at T'=100, 7.5
at T'=300, 2 at T'=500 for the cosine schedule), which the denoiser's image evidence has to overcome to
change a voxel. So the best T' depends on how good the pre-segmenter is and how good the denoiser is.

The final validation of ``PDDDPMTrainer`` runs :func:`sweep_t_prime` on the fold's validation cases (unseen
by the pre-segmenter of the same fold) with a fast sampler and writes ``fold_X/pdddpm_t_prime.json``;
``PDDDPMPredictor`` reads it (:func:`read_auto_t_prime`) when no T' is given.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Iterable, Sequence

import numpy as np
import torch

from nnunet_pdddpm.inference.pre_segmentation import CachedPreSegmentation
from nnunet_pdddpm.inference.settings import SamplingSettings
from nnunet_pdddpm.io_utils import write_json_atomic

T_PRIME_FILE = "pdddpm_t_prime.json"


def foreground_dice(probabilities: torch.Tensor, seg: torch.Tensor) -> float:
    """Mean Dice over foreground channels of argmax(probabilities (K, ...)) against channel indices seg (...).

    Voxels where ``seg < 0`` (nnU-Net's outside-the-mask marker) are left out; a class absent from both
    counts as Dice 1.
    """
    pred = probabilities.argmax(0)
    valid = seg >= 0
    scores = []
    for k in range(1, probabilities.shape[0]):
        p, r = (pred == k) & valid, (seg == k) & valid
        denominator = int(p.sum() + r.sum())
        scores.append(1.0 if denominator == 0 else 2 * int((p & r).sum()) / denominator)
    return float(np.mean(scores))


def sweep_t_prime(predictor, cases: Iterable[tuple[str, torch.Tensor, dict, torch.Tensor]],
                  candidates: Sequence[int], base: SamplingSettings, pre_segmentation) -> dict:
    """Dice of PD-DDPM for each T' in ``candidates`` (with ``base``'s other settings) on ``cases``.

    cases: (key, preprocessed data (C, *shape), nnU-Net properties, ground truth as channel indices (*shape)).
    pre_segmentation: a ``PreSegmentation`` (run once per case here, whatever the number of candidates).
    Returns ``{"t_prime": best, "candidates", "dice", "sampling"}``; the best is the highest mean Dice, the
    smaller T' on a tie (fewer evaluations).
    """
    if not candidates:
        raise ValueError("need at least one T' candidate")
    cases = list(cases)
    cached = CachedPreSegmentation(pre_segmentation)  # every case is sampled once per T'
    dice = []
    for t_prime in candidates:
        sampling = replace(base.at_t_prime(t_prime), vanilla=False, uncertainty="none", uncertainty_per_class=False)
        scores = [foreground_dice(predictor.predict_case(data, props, key, sampling, cached).probabilities, seg)
                  for key, data, props, seg in cases]
        dice.append(float(np.mean(scores)))
    best = int(candidates[int(np.argmax(np.round(dice, 6)))])  # argmax takes the first (smallest) of equal values
    return {"t_prime": best, "candidates": [int(c) for c in candidates], "dice": dice,
            "sampling": {"sampler": base.sampler, "steps": base.steps, "ensemble_size": base.ensemble_size},
            "cases": [key for key, *_ in cases]}


def write_sweep(sweep: dict, fold_folder: str) -> str:
    path = os.path.join(fold_folder, T_PRIME_FILE)
    write_json_atomic(sweep, path, strict=True)
    return path


def read_auto_t_prime(model_folder: str, folds: Sequence[int | str]) -> tuple[int, str] | None:
    """The stored T' for these folds and where it came from, or None when any fold has no sweep.

    Several folds: the T' with the best Dice averaged over the folds' curves (when they share candidates),
    else the median of their best values.
    """
    sweeps = []
    for fold in folds:
        path = os.path.join(model_folder, f"fold_{fold}", T_PRIME_FILE)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            sweeps.append(json.load(f))
    where = ", ".join(f"fold_{f}/{T_PRIME_FILE}" for f in folds)
    if all(s["candidates"] == sweeps[0]["candidates"] for s in sweeps):
        mean = np.mean([s["dice"] for s in sweeps], axis=0)
        return int(sweeps[0]["candidates"][int(np.argmax(np.round(mean, 6)))]), where
    return int(np.median([s["t_prime"] for s in sweeps])), where
