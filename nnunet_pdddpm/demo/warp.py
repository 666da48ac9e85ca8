"""Per-subject anatomy: the template under a mild head pose and a smooth elastic deformation.

A subject is the template seen through ``world = centre + A @ u + t + d(u)``, where ``u`` is a voxel's
offset (mm) from the centre of the subject's field of view, ``A`` a small rotation and scaling,
``t`` a shift and ``d`` a low-frequency displacement field. Shapes follow the ``(z, y, x)``
convention of :mod:`nnunet_pdddpm.demo.template`.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from nnunet_pdddpm.demo.template import MAP_NAMES, MAX_PV_DISTANCE_MM, BrainTemplate

#: Head pose spread: rotation (degrees, per axis), scale (relative, per axis), shift (mm, per axis).
ROTATION_SD_DEG = 3.0
SCALE_SD = 0.04
SHIFT_SD_MM = 3.0
#: Root-mean-square elastic displacement per axis, and its highest cosine order (low frequency).
DISPLACEMENT_RMS_MM = 2.5
DISPLACEMENT_ORDER = 3


def smooth_random_field(shape: tuple[int, ...], max_order: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean random field of 3D cosine modes up to ``max_order`` per axis, scaled to ``rms``.

    Separable modes keep this cheap on large grids (one small ``einsum``), and weights decaying with
    frequency make it smooth: the field has no structure finer than ``size / max_order`` per axis.
    Returns float32 of ``shape``.
    """
    n = max_order + 1
    orders = np.arange(n)
    coeffs = rng.standard_normal((n, n, n)) / (1.0 + orders[:, None, None] + orders[None, :, None] + orders)
    coeffs[0, 0, 0] = 0.0
    bases = [np.cos(np.pi * np.outer((np.arange(s) + 0.5) / s, orders)) for s in shape]
    field = np.einsum("abc,za,yb,xc->zyx", coeffs, *bases, optimize=True)
    std = field[tuple(slice(None, None, max(1, s // 32)) for s in shape)].std()  # a smooth field: a sample will do
    return (field * (rms / std if std > 0 else 0.0)).astype(np.float32)


def random_pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(A, t)``: a 3x3 matrix (rotation times scaling) and a shift in mm, both in (z, y, x) order."""
    angles = np.clip(rng.normal(0.0, ROTATION_SD_DEG, 3), -3 * ROTATION_SD_DEG, 3 * ROTATION_SD_DEG)
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    scale = np.clip(1.0 + rng.normal(0.0, SCALE_SD, 3), 0.85, 1.15)
    return rotation @ np.diag(scale), rng.normal(0.0, SHIFT_SD_MM, 3)


def warp_template(
    template: BrainTemplate,
    offsets: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: tuple[float, float, float],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Sample the template's maps for one subject.

    ``offsets``: per axis, the 1D mm offsets of the grid's voxel centres from the field-of-view
    centre (z, y, x). ``centre``: world mm the field-of-view centre looks at. Returns one float32
    ``(Z, Y, X)`` array per name in :data:`MAP_NAMES` (linear interpolation; outside the template the
    maps are empty and ``pv_distance`` is at its maximum).
    """
    a, t = random_pose(rng)
    shape = tuple(len(o) for o in offsets)
    u = np.meshgrid(*[o.astype(np.float32) for o in offsets], indexing="ij", sparse=True)
    coords = np.empty((3, *shape), np.float32)
    for axis in range(3):
        world = centre[axis] + t[axis] + sum(a[axis, j] * u[j] for j in range(3))
        world = world + smooth_random_field(shape, DISPLACEMENT_ORDER, DISPLACEMENT_RMS_MM, rng)
        coords[axis] = (world - template.world_of_first_voxel[axis]) / template.spacing[axis]
    out = {}
    for name in MAP_NAMES:
        fill = MAX_PV_DISTANCE_MM if name == "pv_distance" else 0.0
        out[name] = ndimage.map_coordinates(
            template.channel(name), coords, order=1, mode="constant", cval=fill, prefilter=False
        )
    return out
