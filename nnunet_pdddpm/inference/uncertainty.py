"""The ensemble's uncertainty: per-voxel maps from its members' class probabilities, and per-case scores.

A patch's M samples are reduced to streaming sums (:class:`MemberSums`): the sum of the probabilities, of their
squares (for ``variance``) and of each member's entropy (for ``expected_entropy`` and ``mutual_information``),
so memory does not grow with M. Each patch's map is then aggregated over patches with nnU-Net's Gaussian
weights, like the probabilities. The maps, for member probabilities p_m (K classes) and their mean p̄:

- ``variance``: population variance over members of each class's probability, mean over classes (the paper's);
- ``entropy``: H(p̄), the total predictive entropy (nats);
- ``expected_entropy``: mean over members of H(p_m), what every member is unsure of (aleatoric);
- ``mutual_information``: H(p̄) - mean H(p_m), the members' disagreement (epistemic; >= 0 by concavity of H).
"""
from __future__ import annotations

import torch

#: probabilities below this count as this in ``p log p`` (decoded samples are never exactly 0, see ``encoding.py``)
LOG_FLOOR = 1e-8
PER_CLASS_KINDS = ("variance", "entropy")


def predictive_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) over classes: (K, *shape) -> (*shape)."""
    return -(probabilities * probabilities.clamp_min(LOG_FLOOR).log()).sum(0)


def binary_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Per class (K, *shape): the entropy (nats) of "this class or not" under the given probability."""
    p = probabilities.clamp(LOG_FLOOR, 1 - LOG_FLOOR)
    return -(p * p.log() + (1 - p) * (1 - p).log())


class MemberSums:
    """Streaming sums of one patch's member probabilities (K, *patch), enough for the map of ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.count = 0
        self.s1: torch.Tensor | float = 0.0  # sum of probabilities
        self.s2: torch.Tensor | float = 0.0  # sum of squared probabilities (variance only)
        self.member_entropy: torch.Tensor | float = 0.0  # sum of the members' entropies (*patch)

    def add(self, probabilities: torch.Tensor) -> None:
        self.count += 1
        self.s1 = self.s1 + probabilities
        if self.kind == "variance":
            self.s2 = self.s2 + probabilities * probabilities
        elif self.kind in ("expected_entropy", "mutual_information"):
            self.member_entropy = self.member_entropy + predictive_entropy(probabilities)

    def mean(self) -> torch.Tensor:
        """The members' mean probabilities (K, *patch)."""
        return self.s1 / self.count

    def class_map(self, mean: torch.Tensor) -> torch.Tensor:
        """Per class (K, *patch): the variance of that class's probability, or the binary entropy of its mean."""
        if self.kind == "variance":
            return (self.s2 / self.count - mean * mean).clamp_min(0)
        return binary_entropy(mean)

    def scalar_map(self, mean: torch.Tensor) -> torch.Tensor:
        """The map of ``kind`` (*patch); ``mean`` is :meth:`mean` (passed in: it is computed once per patch)."""
        if self.kind == "variance":
            return self.class_map(mean).mean(0)
        if self.kind == "entropy":
            return predictive_entropy(mean)
        expected = self.member_entropy / self.count
        if self.kind == "expected_entropy":
            return expected
        return (predictive_entropy(mean) - expected).clamp_min(0)  # rounding only: H is concave


def mean_pairwise_dice(foreground: torch.Tensor) -> float | None:
    """Mean Dice over the pairs i < j of the members' foreground masks (M, *shape) bool; 1 for two empty masks,
    None for a single member (no pair)."""
    sizes = [int(f.sum()) for f in foreground]
    dice = []
    for i in range(len(foreground)):
        for j in range(i + 1, len(foreground)):
            total = sizes[i] + sizes[j]
            dice.append(1.0 if total == 0 else 2 * int((foreground[i] & foreground[j]).sum()) / total)
    return sum(dice) / len(dice) if dice else None


def case_scores(member_foreground: torch.Tensor, mean_probabilities: torch.Tensor,
                uncertainty: torch.Tensor | None, kind: str) -> dict:
    """One case's scores (JSON-ready; None where undefined).

    member_foreground: (M, *shape) bool, each member's argmax (of its patches stitched with the Gaussian weights)
    is not background. mean_probabilities: the ensemble mean (K, *shape). uncertainty: the map of ``kind``
    (*shape), or None. ``mean_uncertainty_foreground`` averages the map over the voxels that the mean or any
    member calls foreground: lesions are small, so over the whole image the confident background dominates
    the mean (``mean_uncertainty``) and hides how unsure the ensemble is about what it segments.
    """
    predicted = member_foreground.any(0) | (mean_probabilities.argmax(0) != 0)
    scores = {"pairwise_dice": mean_pairwise_dice(member_foreground), "mean_uncertainty_foreground": None,
              "mean_uncertainty": None, "uncertainty": kind}
    if uncertainty is not None:
        unc = uncertainty.double()
        scores["mean_uncertainty"] = float(unc.mean())
        if predicted.any():
            scores["mean_uncertainty_foreground"] = float(unc[predicted].mean())
    return scores
