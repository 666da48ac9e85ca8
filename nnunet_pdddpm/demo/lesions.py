"""White-matter hyperintensities: periventricular caps and bands plus small deep white-matter foci.

Lesions are drawn as a fractional map (0..1 per voxel, soft one-voxel edges) on a thin-slice grid;
the caller averages it over each thick slice and thresholds at 0.5, which gives the partial-volume
behaviour of real 3 mm FLAIR. Everything stays inside the subject's white-matter map.
"""
from __future__ import annotations

import numpy as np

from nnunet_pdddpm.demo.warp import smooth_random_field

#: Share of the lesion load that is periventricular (the rest are deep foci), drawn per subject.
PERIVENTRICULAR_SHARE = (0.55, 0.9)
#: Irregularity of the periventricular rim: rms (mm) and highest cosine order of the perturbation.
RIM_NOISE_RMS_MM = 2.5
RIM_NOISE_ORDER = 6
#: Deep foci: radius range (mm, log-uniform) and the minimum (horn-shrunk) distance from the ventricles.
DEEP_RADIUS_MM = (1.2, 4.0)
DEEP_MIN_PV_DISTANCE_MM = 9.0
MAX_DEEP_LESIONS = 400


def white_matter_weight(wm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Where lesions may be: a soft step from white-matter probability 0.35 to 0.65, inside the brain."""
    return (np.clip((wm - 0.35) / 0.3, 0.0, 1.0) * np.clip(brain, 0.0, 1.0)).astype(np.float32)


def lesion_fraction(
    anatomy: dict[str, np.ndarray], spacing: tuple[float, float, float], load_ml: float, rng: np.random.Generator
) -> np.ndarray:
    """Fraction of each voxel that is lesion, float32 ``(Z, Y, X)`` in [0, 1], totalling about ``load_ml``.

    ``anatomy``: warped maps from :func:`nnunet_pdddpm.demo.warp.warp_template`; ``spacing``: (z, y, x) mm.
    """
    weight = white_matter_weight(anatomy["wm"], anatomy["brain"])
    share = rng.uniform(*PERIVENTRICULAR_SHARE)
    pv = _periventricular(anatomy["pv_distance"], weight, spacing, share * load_ml, rng)
    deep = _deep_foci(anatomy, weight, spacing, (1 - share) * load_ml, rng)
    return np.maximum(pv, deep)


def _periventricular(pv_distance, weight, spacing, load_ml, rng) -> np.ndarray:
    """Threshold a perturbed distance-to-ventricle map so that the white matter it covers holds ``load_ml``."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    score = pv_distance + smooth_random_field(pv_distance.shape, RIM_NOISE_ORDER, RIM_NOISE_RMS_MM, rng)
    candidates = score[weight > 0.5]
    n = int(round(load_ml / voxel_ml))
    if candidates.size == 0 or n == 0:
        return np.zeros_like(score)
    threshold = np.partition(candidates, min(n, candidates.size - 1))[min(n, candidates.size - 1)]
    edge_mm = min(spacing)
    return (np.clip((threshold - score) / edge_mm + 0.5, 0.0, 1.0) * weight).astype(np.float32)


def _deep_foci(anatomy, weight, spacing, load_ml, rng) -> np.ndarray:
    """Add ellipsoidal foci at random deep white-matter points until their in-white-matter volume is ``load_ml``."""
    out = np.zeros_like(weight)
    allowed = (anatomy["wm"] > 0.8) & (anatomy["pv_distance"] > DEEP_MIN_PV_DISTANCE_MM)
    centres = np.flatnonzero(allowed)
    if centres.size == 0 or load_ml <= 0:
        return out
    spacing = np.asarray(spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    edge_mm = float(spacing.min())
    total = 0.0
    for _ in range(MAX_DEEP_LESIONS):
        if total >= load_ml:
            break
        centre = np.array(np.unravel_index(rng.choice(centres), out.shape))
        radii = np.exp(rng.uniform(*np.log(DEEP_RADIUS_MM))) * rng.uniform(0.7, 1.3, 3)
        reach = np.ceil((radii + edge_mm) / spacing).astype(int)
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, out.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        axes = np.ogrid[box]
        rho = np.sqrt(sum(((ax - c) * s / r) ** 2 for ax, c, s, r in zip(axes, centre, spacing, radii)))
        blob = np.clip((1.0 - rho) * radii.mean() / edge_mm + 0.5, 0.0, 1.0) * weight[box]
        before = out[box].sum()
        np.maximum(out[box], blob, out=out[box])
        total += (out[box].sum() - before) * voxel_ml
    return out
