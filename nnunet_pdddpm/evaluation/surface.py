"""95th-percentile Hausdorff distance (HD95, mm) exactly as the WMH challenge computes it.

Source: ``hjkuijf/wmhchallenge``, ``evaluation.py`` (``getHausdorff``), restated in
``WMH_METRICS.md``:

1. Boundary = mask minus its erosion by the full 3x3 square in the (y, x) plane, slice by
   slice (SimpleITK ``BinaryErode(mask, (1, 1, 0))``). Voxels outside the image count as
   foreground, so a mask voxel on the image border is boundary only if an in-image neighbour
   is background.
2. Boundary voxels are mapped to physical points (mm) with the reference image's spacing,
   origin and direction.
3. For each boundary point of one mask, the Euclidean distance to the nearest boundary point
   of the other (``scipy.spatial.cKDTree``); HD95 = max of the two directed 95th percentiles
   (numpy's default linear interpolation).

Array convention: numpy arrays in SimpleITK's order, (z, y, x) for 3D and (y, x) for 2D;
the erosion is in-plane over the last two axes. :class:`Geometry` stores spacing, origin and
direction in SimpleITK's (x, y, z) order, as ``image.GetSpacing()`` returns them.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["Geometry", "boundary", "boundary_points", "hd95"]


class Geometry(NamedTuple):
    """Index-to-physical mapping of an image, in SimpleITK's (x, y, z) order.

    ``point = origin + direction @ (spacing * index_xyz)``, with ``direction`` the row-major
    flattened ``ndim x ndim`` matrix of ``image.GetDirection()``.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def from_image(cls, image: sitk.Image) -> "Geometry":
        """Geometry of a SimpleITK image (only its header is used)."""
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    @classmethod
    def identity(cls, ndim: int) -> "Geometry":
        """Unit spacing, zero origin, identity direction: distances in voxels."""
        return cls((1.0,) * ndim, (0.0,) * ndim, tuple(np.eye(ndim).ravel()))


def _as_geometry(geometry: Geometry | sitk.Image | None, ndim: int) -> Geometry:
    if geometry is None:
        return Geometry.identity(ndim)
    if isinstance(geometry, sitk.Image):
        geometry = Geometry.from_image(geometry)
    if len(geometry.spacing) != ndim:
        raise ValueError(f"geometry is {len(geometry.spacing)}D but the masks are {ndim}D")
    return geometry


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boolean boundary of ``mask`` (2D (y, x) or 3D (z, y, x)): mask minus its in-plane 3x3 erosion.

    Equals ``mask - sitk.BinaryErode(mask, (1, 1, 0))``: the structuring element is the full
    3x3 square in (y, x) and a single voxel through-plane, and ``border_value=1`` reproduces
    ITK's "outside the image is foreground" rule.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D mask, got {mask.ndim}D")
    structure = np.ones((1,) * (mask.ndim - 2) + (3, 3), dtype=bool)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=1)
    return mask & ~eroded


def boundary_points(mask: np.ndarray, geometry: Geometry | sitk.Image | None = None) -> np.ndarray:
    """Physical coordinates (mm), shape (N, ndim) in (x, y, z) order, of the boundary voxels of ``mask``."""
    mask = np.asarray(mask)
    geometry = _as_geometry(geometry, mask.ndim)
    index_xyz = np.argwhere(boundary(mask))[:, ::-1].astype(np.float64)  # numpy (z, y, x) -> ITK (x, y, z)
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(mask.ndim, mask.ndim)
    scaled = index_xyz * np.asarray(geometry.spacing, dtype=np.float64)
    return np.asarray(geometry.origin, dtype=np.float64) + scaled @ direction.T


def hd95(reference: np.ndarray, prediction: np.ndarray, geometry: Geometry | sitk.Image | None = None) -> float:
    """HD95 in mm between two binary masks of one shape ((z, y, x) or (y, x), nonzero = foreground).

    ``geometry`` is the reference image (or its :class:`Geometry`); None means unit voxels.
    Returns NaN when the prediction is empty (the challenge's rule: not 0, not infinity). It
    is also NaN when the reference is empty or either mask has no boundary voxel (a mask that
    fills whole image planes), where the challenge script would fail: the distance to nothing
    is undefined.
    """
    reference = np.asarray(reference).astype(bool, copy=False)
    prediction = np.asarray(prediction).astype(bool, copy=False)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    if not prediction.any() or not reference.any():
        return float("nan")
    ref_points = boundary_points(reference, geometry)
    pred_points = boundary_points(prediction, geometry)
    if len(ref_points) == 0 or len(pred_points) == 0:
        return float("nan")
    ref_to_pred = cKDTree(pred_points).query(ref_points, k=1)[0]
    pred_to_ref = cKDTree(ref_points).query(pred_points, k=1)[0]
    return float(max(np.percentile(ref_to_pred, 95), np.percentile(pred_to_ref, 95)))
