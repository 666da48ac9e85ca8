"""Masks as diffusion data: one-hot over nnU-Net's label set, scaled to [-1, 1].

Channel k stands for the k-th entry of nnU-Net's ``LabelManager.all_labels`` (background first),
so a binary dataset has two channels. Decoding maps a sample back to per-voxel class
probabilities that sum to one, so the ensemble mean is a proper probability map and, for a binary
dataset, ``argmax`` equals the paper's "mean foreground > 0.5".
"""
from __future__ import annotations

import torch


def encode_labels(seg: torch.Tensor, labels: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Label map (B, 1, *spatial) or (B, *spatial) with values in ``labels`` -> (B, K, *spatial) in {-1, 1}."""
    if seg.ndim >= 2 and seg.shape[1] == 1:
        seg = seg[:, 0]
    onehot = torch.stack([seg == lab for lab in labels], dim=1)
    return onehot.float() * 2 - 1


def encode_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Soft pre-segmentation (B, K, ...) in [0, 1] -> [-1, 1] (the option to keep the segmenter's confidence)."""
    return probabilities.float().clamp(0, 1) * 2 - 1


def hard_onehot(probabilities: torch.Tensor) -> torch.Tensor:
    """Argmax of (B, K, ...) probabilities as one-hot in {-1, 1} (the paper's hard pre-segmentation)."""
    idx = probabilities.argmax(1, keepdim=True)
    onehot = torch.zeros_like(probabilities, dtype=torch.float32).scatter_(1, idx, 1.0)
    return onehot * 2 - 1


def encode_pre_segmentation(probabilities: torch.Tensor, soft: bool) -> torch.Tensor:
    """The pre-segmentation as the start of the forward process: (B, K, ...) probabilities -> (B, K, ...) in [-1, 1].

    ``soft``: its probabilities as 2p - 1 (what the refiner is trained on and samples from); else its one-hot argmax
    (the paper). Voxels whose probabilities are all zero (padding around the image) are background, so that padding
    does not start as the first class by accident of argmax or as "no class" in the soft encoding.
    """
    probabilities = probabilities.float()
    blank = probabilities.sum(1) == 0
    if blank.any():
        probabilities = probabilities.clone()
        probabilities[:, 0][blank] = 1
    return encode_probabilities(probabilities) if soft else hard_onehot(probabilities)


def decode_to_probabilities(x0: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Sample in [-1, 1] (B, K, ...) -> class probabilities (B, K, ...) summing to 1 over K.

    Each channel is mapped to [0, 1] by (x + 1) / 2 and the channels are renormalised; a voxel
    where every channel is at -1 becomes uniform.
    """
    p = ((x0.float() + 1) / 2).clamp(0, 1) + eps
    return p / p.sum(1, keepdim=True)
