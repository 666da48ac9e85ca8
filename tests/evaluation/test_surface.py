"""HD95 against brute force: explicit erosion loop, hand-made physical coordinates, all pairwise distances."""
import itertools
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_pdddpm.evaluation.surface import Geometry, boundary, boundary_points, hd95

SPACING = (3.0, 1.0, 1.2)  # SimpleITK (x, y, z) order, anisotropic
ORIGIN = (-10.0, 4.5, 2.0)
ANGLE = 0.4
# A rotation about z composed with a flip of y: non-identity, non-symmetric direction.
DIRECTION = tuple((np.array([[math.cos(ANGLE), -math.sin(ANGLE), 0], [math.sin(ANGLE), math.cos(ANGLE), 0], [0, 0, 1]])
                   @ np.diag([1.0, -1.0, 1.0])).ravel())
GEOMETRY = Geometry(SPACING, ORIGIN, DIRECTION)


def brute_boundary(mask: np.ndarray) -> np.ndarray:
    """A mask voxel is boundary if any in-plane 3x3 neighbour inside the image is background."""
    out = np.zeros_like(mask, dtype=bool)
    for index in itertools.product(*(range(n) for n in mask.shape)):
        if not mask[index]:
            continue
        *lead, y, x = index
        for dy, dx in itertools.product((-1, 0, 1), repeat=2):
            yy, xx = y + dy, x + dx
            if 0 <= yy < mask.shape[-2] and 0 <= xx < mask.shape[-1] and not mask[(*lead, yy, xx)]:
                out[index] = True
    return out


def brute_points(mask: np.ndarray, spacing, origin, direction) -> np.ndarray:
    """Physical point = origin + D (spacing * index), index in (x, y, z) order, computed coordinate by coordinate."""
    ndim = mask.ndim
    d = np.asarray(direction).reshape(ndim, ndim)
    points = []
    for index in zip(*np.nonzero(mask)):
        ijk = index[::-1]
        points.append([origin[r] + sum(d[r, c] * spacing[c] * ijk[c] for c in range(ndim)) for r in range(ndim)])
    return np.array(points, dtype=float).reshape(-1, ndim)


def linear_percentile(values: np.ndarray, q: float) -> float:
    v = sorted(values)
    pos = q / 100 * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def brute_hd95(ref, pred, spacing, origin, direction) -> float:
    a = brute_points(brute_boundary(ref), spacing, origin, direction)
    b = brute_points(brute_boundary(pred), spacing, origin, direction)
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(linear_percentile(dist.min(1), 95), linear_percentile(dist.min(0), 95))


def random_blobs(shape, seed, p=0.35):
    rng = np.random.default_rng(seed)
    return rng.random(shape) < p


@pytest.mark.parametrize("seed", range(4))
def test_boundary_matches_loop_and_simpleitk(seed):
    mask = random_blobs((4, 8, 7), seed, p=0.6)
    mask[1] = True  # a full slice: no boundary at all (outside counts as foreground)
    expected = brute_boundary(mask)
    assert np.array_equal(boundary(mask), expected)
    eroded = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(mask.astype(np.uint8)), (1, 1, 0)))
    assert np.array_equal(mask & (eroded == 0), expected)
    assert not expected[1].any()


def test_boundary_2d():
    mask = random_blobs((9, 8), 3, p=0.7)
    assert np.array_equal(boundary(mask), brute_boundary(mask))


def test_points_match_hand_formula_and_simpleitk():
    mask = random_blobs((3, 5, 4), 1, p=0.5)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    got = boundary_points(mask, image)
    np.testing.assert_allclose(got, brute_points(brute_boundary(mask), SPACING, ORIGIN, DIRECTION), atol=1e-9)
    itk = [image.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]]) for idx in np.argwhere(boundary(mask))]
    np.testing.assert_allclose(got, np.array(itk), atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_hd95_matches_pairwise_brute_force(seed):
    ref, pred = random_blobs((4, 9, 8), seed), random_blobs((4, 9, 8), seed + 100, p=0.2)
    expected = brute_hd95(ref, pred, SPACING, ORIGIN, DIRECTION)
    assert hd95(ref, pred, GEOMETRY) == pytest.approx(expected, rel=1e-12)


def test_hd95_accepts_image_and_depends_on_spacing_not_origin():
    ref, pred = random_blobs((3, 7, 7), 11), random_blobs((3, 7, 7), 12)
    image = sitk.GetImageFromArray(ref.astype(np.uint8))
    image.SetSpacing(SPACING)
    image.SetDirection(DIRECTION)
    assert hd95(ref, pred, image) == pytest.approx(hd95(ref, pred, GEOMETRY))
    unit = brute_hd95(ref, pred, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    assert hd95(ref, pred) == pytest.approx(unit)


def test_hd95_2d_anisotropic():
    ref, pred = random_blobs((10, 9), 5), random_blobs((10, 9), 6, p=0.15)
    geometry = Geometry((0.7, 2.5), (1.0, -3.0), (0.0, 1.0, 1.0, 0.0))
    assert hd95(ref, pred, geometry) == pytest.approx(brute_hd95(ref, pred, *geometry))


def test_hd95_single_voxels_known_distance():
    ref, pred = np.zeros((5, 6, 6), bool), np.zeros((5, 6, 6), bool)
    ref[1, 2, 2] = True
    pred[3, 2, 4] = True  # 2 slices (z) and 2 columns (x) away
    geometry = Geometry((3.0, 1.0, 1.2), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    assert hd95(ref, pred, geometry) == pytest.approx(math.hypot(2 * 3.0, 2 * 1.2))


def test_hd95_identical_is_zero_and_empty_is_nan():
    mask = random_blobs((3, 6, 6), 2)
    empty = np.zeros_like(mask)
    assert hd95(mask, mask, GEOMETRY) == 0.0
    assert math.isnan(hd95(mask, empty, GEOMETRY))  # empty prediction: the challenge's NaN
    assert math.isnan(hd95(empty, mask, GEOMETRY))
    assert math.isnan(hd95(empty, empty, GEOMETRY))
