"""Label-space imitations of a pre-segmenter's errors, for pre-segmentation-aware denoiser training.

At inference PD-DDPM diffuses the *pre-segmentation* to T', not the ground truth; a denoiser trained only
on diffused ground truth has never seen the mistakes it is supposed to correct (the paper's "gap" between
the two diffused masks; Fu et al., MELBA 2023, close the same gap by training on the model's own
predictions). Here the mistakes are made in label space, on the device, from the training mask alone, so
no extra model or fold has to exist: shifted boundaries (one-voxel dilation or erosion), missed parts
(coarse cells of foreground set to background: whole small lesions, pieces of large ones) and spurious
blobs (smooth random shapes of a foreground class). The denoiser then learns to return the ground truth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BOUNDARY_PROBABILITY = 0.5  # chance of a one-voxel dilation or erosion (then equally likely)
MISS_PROBABILITY = 0.5  # chance that some coarse cells of foreground are removed
MISS_CELL_FRACTION = 0.3  # fraction of cells removed when they are
SPURIOUS_PROBABILITY = 0.5  # chance of spurious blobs
SPURIOUS_VOXEL_FRACTION = 0.01  # about this fraction of the patch becomes spurious foreground
COARSE_FACTOR = 8  # cells and blobs are drawn at 1/8 of the patch resolution (at least 1 voxel)


def _pool(x: torch.Tensor) -> torch.Tensor:
    """3-voxel max filter over the spatial axes of (B, C, *spatial) (2D or 3D)."""
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, 3, stride=1, padding=1)


def _coarse_field(shape: tuple[int, ...], device: torch.device, smooth: bool) -> torch.Tensor:
    """Uniform noise (B, 1, *spatial) at 1/COARSE_FACTOR resolution, upsampled to ``shape`` (B, 1, *spatial)."""
    coarse = [max(1, s // COARSE_FACTOR) for s in shape[2:]]
    field = torch.rand((shape[0], 1, *coarse), device=device)
    mode = ("bilinear" if len(coarse) == 2 else "trilinear") if smooth else "nearest"
    return F.interpolate(field, size=shape[2:], mode=mode, **({"align_corners": False} if smooth else {}))


def _per_sample(probability: float, batch: int, device: torch.device, ndim: int) -> torch.Tensor:
    return (torch.rand(batch, device=device) < probability).reshape(-1, *([1] * (ndim - 1)))


def simulate_pre_segmentation_errors(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A plausibly wrong segmentation for each mask of the batch.

    labels: class indices (B, 1, *spatial), 0 = background, 1..num_classes-1 foreground classes (channel
    order of the mask encoding). Returns class indices of the same shape and dtype. Each sample gets each
    kind of error independently with the probabilities above, so some samples stay unchanged.
    """
    b, device, ndim = labels.shape[0], labels.device, labels.ndim
    out = labels.clone()
    if num_classes < 2:
        return out
    foreground = [(labels == c).float() for c in range(1, num_classes)]

    # boundaries: dilate (background next to class c becomes c) or erode (foreground at an edge becomes background)
    shift = _per_sample(BOUNDARY_PROBABILITY, b, device, ndim)
    dilate = shift & _per_sample(0.5, b, device, ndim)
    erode = shift & ~dilate
    for c, fg in enumerate(foreground, start=1):
        grown = _pool(fg) > 0
        out = torch.where(dilate & grown & (out == 0), torch.full_like(out, c), out)
        edge = (fg > 0) & (-_pool(-fg) <= 0)
        out = torch.where(erode & edge, torch.zeros_like(out), out)

    # missed parts: foreground in removed coarse cells becomes background
    miss = _per_sample(MISS_PROBABILITY, b, device, ndim)
    removed = _coarse_field(tuple(labels.shape), device, smooth=False) < MISS_CELL_FRACTION
    out = torch.where(miss & removed & (out > 0), torch.zeros_like(out), out)

    # spurious blobs: the top fraction of a smooth random field, one random foreground class per sample
    spurious = _per_sample(SPURIOUS_PROBABILITY, b, device, ndim)
    field = _coarse_field(tuple(labels.shape), device, smooth=True)
    threshold = torch.quantile(field.flatten(1), 1 - SPURIOUS_VOXEL_FRACTION, dim=1)
    blobs = field > threshold.reshape(-1, *([1] * (ndim - 1)))
    cls = torch.randint(1, num_classes, (b,), device=device).reshape(-1, *([1] * (ndim - 1))).to(out.dtype)
    out = torch.where(spurious & blobs & (out == 0), cls.expand_as(out), out)
    return out
