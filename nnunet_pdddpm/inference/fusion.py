"""Fusion of the ensemble's probabilities with the pre-segmenter's, after aggregation over patches.

The probabilities change, and so does the ``entropy`` map: it is the entropy of the fused probabilities, the
predictive entropy of the mixture that is delivered (``PDDDPMPredictor.predict_case``). The members' maps
(``variance``, ``expected_entropy``, ``mutual_information``) and the pairwise Dice stay the ensemble's: they
describe what was sampled.
"""
from __future__ import annotations

import torch


def fuse_with_pre_segmentation(ensemble: torch.Tensor, pre_segmentation: torch.Tensor, weight: float,
                               confidence_gate: float | None) -> torch.Tensor:
    """(K, *shape) ensemble mean and pre-segmenter probabilities (each summing to 1 over K) -> (K, *shape).

    ``weight`` w in [0, 1]: (1 - w) * ensemble + w * pre_segmentation. ``confidence_gate``: where the ensemble's
    largest class probability is below it, the voxel takes the pre-segmenter's probabilities instead (None: no
    gate). Both zero/None return ``ensemble`` itself.
    """
    fused = ensemble if weight == 0 else (1 - weight) * ensemble + weight * pre_segmentation
    if confidence_gate is None:
        return fused
    confident = ensemble.amax(0) >= confidence_gate
    return torch.where(confident, fused, pre_segmentation)
