"""Dice, Jaccard and voxel F1 against explicit voxel counting."""
import itertools
import math

import numpy as np
import pytest

from nnunet_pdddpm.evaluation.overlap import dice, jaccard, voxel_f1


def brute_counts(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    tp = fp = fn = 0
    for index in itertools.product(*(range(n) for n in a.shape)):
        if a[index] and b[index]:
            tp += 1
        elif b[index]:
            fp += 1
        elif a[index]:
            fn += 1
    return tp, fp, fn


@pytest.mark.parametrize("shape", [(4, 6, 5), (7, 9)])
@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force(shape, seed):
    rng = np.random.default_rng(seed)
    ref, pred = rng.random(shape) < 0.3, rng.random(shape) < 0.4
    tp, fp, fn = brute_counts(ref, pred)
    assert dice(ref, pred) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert jaccard(ref, pred) == pytest.approx(tp / (tp + fp + fn))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert voxel_f1(ref, pred) == pytest.approx(2 * precision * recall / (precision + recall))


def test_both_empty_is_nan_one_empty_is_zero():
    empty, full = np.zeros((3, 3, 3), bool), np.ones((3, 3, 3), bool)
    assert math.isnan(dice(empty, empty)) and math.isnan(jaccard(empty, empty)) and math.isnan(voxel_f1(empty, empty))
    assert dice(empty, full) == 0.0 and jaccard(full, empty) == 0.0


def test_identical_and_integer_input():
    mask = np.zeros((5, 5), np.uint8)
    mask[1:3, 2:4] = 1
    assert dice(mask, mask) == 1.0 and jaccard(mask, mask) == 1.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        dice(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
