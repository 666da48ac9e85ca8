"""Pre-segmentations for experiments: computed once per case and shared, or deliberately degraded.

Both classes are a :class:`~nnunet_pdddpm.inference.pre_segmentation.PreSegmentation`
(``probabilities(data, properties, case_key)`` and ``check_case(case_key)``) and return
probabilities (K, *preprocessed shape), channel 0 = background, summing to one over K.

Degradations act in the preprocessed space on the argmax of the pre-segmenter's probabilities
(the paper encodes the argmax, so only the hard map matters), except ``noise``, which perturbs
the probabilities themselves before that argmax. Erosion and dilation are in-plane (cross-shaped
element over the last two axes): WMH scans have thick slices and 2d configurations see one slice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.ensemble_sampling import case_seed
from nnunet_pdddpm.inference.pre_segmentation import CachedPreSegmentation

#: degradation kinds and what their strength means
DEGRADATIONS = {
    "zero": "all background (strength ignored)",
    "erode": "foreground eroded in-plane by this many voxels",
    "dilate": "foreground dilated in-plane into the background by this many voxels",
    "noise": "Gaussian noise of this standard deviation added to every class probability, then re-normalised",
}


@dataclass(frozen=True)
class Degradation:
    """One degradation: ``kind`` in :data:`DEGRADATIONS` and its ``strength``."""

    kind: str
    strength: float = 0.0

    @property
    def name(self) -> str:
        return "zero" if self.kind == "zero" else f"{self.kind} {self.strength:g}"

    @classmethod
    def parse(cls, spec: str) -> "Degradation":
        """``zero``, ``erode:2``, ``dilate:1``, ``noise:0.3`` -> :class:`Degradation`."""
        kind, _, value = spec.partition(":")
        if kind not in DEGRADATIONS:
            raise PDDDPMUserError(f"Unknown degradation {spec!r}; use zero, erode:N, dilate:N or noise:STD.")
        if kind == "zero":
            return cls("zero")
        try:
            strength = float(value)
        except ValueError:
            raise PDDDPMUserError(f"Degradation {spec!r} needs a number after ':', e.g. {kind}:2.") from None
        if strength < 0 or (kind in ("erode", "dilate") and strength != int(strength)):
            raise PDDDPMUserError(f"Degradation {spec!r}: the strength must be a non-negative "
                                  f"{'integer' if kind != 'noise' else 'number'}.")
        return cls(kind, strength)

    def apply(self, probabilities: torch.Tensor, case_key: str | None, seed: int = 0) -> torch.Tensor:
        """Degrade probabilities (K, *spatial); returns new probabilities of the same shape."""
        probs = probabilities.float().numpy()
        if self.kind == "noise":
            rng = np.random.default_rng([seed, case_seed(case_key)])
            noisy = np.clip(probs + rng.normal(0.0, self.strength, probs.shape).astype(np.float32), 0, None)
            noisy[0] += 1e-6  # a voxel whose classes all clip to 0 becomes background
            return torch.from_numpy(noisy / noisy.sum(0, keepdims=True))
        labels = probs.argmax(0)
        if self.kind == "erode":
            labels = _erode(labels, int(self.strength))
        elif self.kind == "dilate":
            labels = _dilate(labels, int(self.strength))
        else:
            labels = np.zeros_like(labels)
        return torch.from_numpy(np.eye(probs.shape[0], dtype=np.float32)[labels]).movedim(-1, 0).contiguous()


def _in_plane_structure(ndim: int) -> np.ndarray:
    structure = np.zeros((3,) * ndim, dtype=bool)
    centre = (1,) * (ndim - 2)
    structure[centre] = ndimage.generate_binary_structure(2, 1)
    return structure


def _erode(labels: np.ndarray, iterations: int) -> np.ndarray:
    if iterations == 0:
        return labels
    out = np.zeros_like(labels)
    structure = _in_plane_structure(labels.ndim)
    for label in np.unique(labels[labels > 0]):
        out[ndimage.binary_erosion(labels == label, structure, iterations)] = label
    return out


def _dilate(labels: np.ndarray, iterations: int) -> np.ndarray:
    """Grow every foreground label into background only (labels never overwrite each other)."""
    if iterations == 0:
        return labels
    structure = _in_plane_structure(labels.ndim)
    out = labels.copy()
    for label in np.unique(labels[labels > 0]):
        grown = ndimage.binary_dilation(labels == label, structure, iterations)
        out[grown & (out == 0)] = label
    return out


class DegradedPreSegmentation:
    """A :class:`CachedPreSegmentation` seen through a :class:`Degradation` (deterministic per case and seed)."""

    def __init__(self, base: CachedPreSegmentation, degradation: Degradation, seed: int = 0):
        self.base = base
        self.degradation = degradation
        self.seed = seed
        self.name = degradation.name
        self.cache: dict[str, torch.Tensor] = {}

    @property
    def seconds(self) -> dict[str, float]:
        return self.base.seconds

    @property
    def nfe(self) -> dict[str, int]:
        return self.base.nfe

    def check_case(self, case_key: str | None) -> None:
        self.base.check_case(case_key)

    def probabilities(self, data: torch.Tensor, properties: dict, case_key: str | None) -> torch.Tensor:
        if case_key not in self.cache:
            clean = self.base.probabilities(data, properties, case_key)
            self.cache[case_key] = self.degradation.apply(clean, case_key, self.seed)
        return self.cache[case_key]
