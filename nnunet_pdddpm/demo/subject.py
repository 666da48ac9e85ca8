"""One synthetic WMH subject: warped anatomy, lesions, FLAIR/T1 contrast, thick slices, bias, noise.

The image is formed on a thin-slice grid (each thick slice split into ``k`` sub-slices near the
in-plane spacing) and averaged over each thick slice, the way a 3 mm acquisition integrates over its
slab. Contrast values are relative to white matter (= 1) and loosely follow the MICCAI WMH data:
grey matter brighter than white matter on FLAIR, CSF suppressed, lesions 1.5-2x white matter on
FLAIR and darker on T1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from nnunet_pdddpm.demo.lesions import lesion_fraction
from nnunet_pdddpm.demo.template import T1_WHITE_MATTER, load_template
from nnunet_pdddpm.demo.warp import smooth_random_field, warp_template

#: ITK direction of every image: axial slices, index axes along R, A, S (what dcm2niix writes for axial).
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Grid:
    """The acquisition: ``shape`` and ``spacing`` in (z, y, x) order, voxels in mm, z the slice axis."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    centre: tuple[float, float, float]
    """World mm (z, y, x) of the template that the field-of-view centre looks at."""

    @property
    def sub_slices(self) -> int:
        """Thin slices averaged into one thick slice, so that thin slices are about as thick as pixels are wide."""
        return max(1, round(self.spacing[0] / self.spacing[1]))


@dataclass(frozen=True)
class Subject:
    """Arrays ``(Z, Y, X)``: ``flair`` and ``t1`` int16 in arbitrary scanner units, ``label`` uint8 in {0, 1}.

    ``spacing`` and ``origin`` are in ITK (x, y, z) order, like ``SimpleITK.Image.GetSpacing``.
    """

    flair: np.ndarray
    t1: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(DIRECTION)
        return image


def make_subject(grid: Grid, load_ml: float, rng: np.random.Generator) -> Subject:
    """Synthesise one subject with about ``load_ml`` ml of lesion (before thick-slice partial volume)."""
    k = grid.sub_slices
    thin = (grid.spacing[0] / k, grid.spacing[1], grid.spacing[2])
    template = load_template(max(1, math.floor(min(thin))))
    offsets = _offsets((grid.shape[0] * k, *grid.shape[1:]), thin)
    anatomy = warp_template(template, offsets, grid.centre, rng)
    lesion = lesion_fraction(anatomy, thin, load_ml, rng)
    flair, t1 = _contrast(anatomy, lesion, rng)
    flair, t1, lesion = (_thick_slices(a, k) for a in (flair, t1, lesion))
    label = (lesion >= 0.5).astype(np.uint8)
    if not label.any():  # every subject gets a lesion, so per-case metrics such as Dice stay defined
        label.flat[np.argmax(lesion)] = 1
    flair, t1 = (_acquire(a, rng) for a in (flair, t1))
    return Subject(flair, t1, label, tuple(grid.spacing[::-1]), _random_origin(grid, rng))


def _offsets(shape, spacing) -> tuple[np.ndarray, ...]:
    return tuple((np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing))


def _contrast(anatomy, lesion, rng) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR from tissue fractions; T1 from the template itself; lesions bright on FLAIR, dark-ish on T1."""
    brain, gm, wm = anatomy["brain"], anatomy["gm"], anatomy["wm"]
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    flair = wm + rng.uniform(1.15, 1.35) * gm + rng.uniform(0.1, 0.25) * csf
    strength = np.clip(1.0 + smooth_random_field(lesion.shape, 4, 0.12, rng), 0.6, 1.3) * lesion
    flair = flair + (rng.uniform(0.5, 1.1) * brain) * strength
    t1 = anatomy["t1"] / T1_WHITE_MATTER * (1.0 - rng.uniform(0.2, 0.35) * strength)
    return flair.astype(np.float32), t1.astype(np.float32)


def _thick_slices(a: np.ndarray, k: int) -> np.ndarray:
    return a.reshape(a.shape[0] // k, k, *a.shape[1:]).mean(axis=1)


def _acquire(image: np.ndarray, rng) -> np.ndarray:
    """Multiplicative smooth bias field, Rician noise (magnitude of complex Gaussian), arbitrary scanner scale.

    Stored as int16 like scanner output (white matter at 300-3000 units keeps quantisation far below
    the noise, and integers compress three times better than noisy floats).
    """
    bias = np.exp(smooth_random_field(image.shape, 2, rng.uniform(0.05, 0.15), rng))
    sigma = rng.uniform(0.015, 0.04)
    real = image * bias + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    scale = 10 ** rng.uniform(2.5, 3.5)
    return np.clip(np.round(np.sqrt(real**2 + imag**2) * scale), 0, np.iinfo(np.int16).max).astype(np.int16)


def _random_origin(grid: Grid, rng) -> tuple[float, float, float]:
    """ITK origin (LPS mm of voxel 0) of a field of view centred near, not at, the scanner's isocentre."""
    centre_ras = (rng.normal(15.0, 8.0), rng.normal(-15.0, 8.0), rng.normal(0.0, 3.0))  # (z, y, x)
    first_ras = [c - (n - 1) / 2 * s for c, n, s in zip(centre_ras, grid.shape, grid.spacing)]
    z, y, x = (round(v, 4) for v in first_ras)
    return (-x, -y, z)
