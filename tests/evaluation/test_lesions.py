"""Lesion detection and AVD against a plain BFS flood fill with the full neighbourhood."""
import collections
import itertools
import math

import numpy as np
import pytest

from nnunet_pdddpm.evaluation.lesions import (
    avd,
    connected_components,
    lesion_f1,
    lesion_metrics,
    lesion_precision,
    lesion_recall,
)


def bfs_components(mask: np.ndarray) -> list[set[tuple[int, ...]]]:
    """Components as sets of indices; neighbours differ by at most 1 along every axis (26 in 3D, 8 in 2D)."""
    offsets = [d for d in itertools.product((-1, 0, 1), repeat=mask.ndim) if any(d)]
    seen, components = set(), []
    for start in zip(*np.nonzero(mask)):
        start = tuple(int(i) for i in start)
        if start in seen:
            continue
        seen.add(start)
        component, queue = set(), collections.deque([start])
        while queue:
            voxel = queue.popleft()
            component.add(voxel)
            for d in offsets:
                n = tuple(v + o for v, o in zip(voxel, d))
                if all(0 <= c < s for c, s in zip(n, mask.shape)) and mask[n] and n not in seen:
                    seen.add(n)
                    queue.append(n)
        components.append(component)
    return components


def brute_fraction(source, target) -> float:
    components = bfs_components(source)
    if not components:
        return 1.0
    return sum(any(target[v] for v in c) for c in components) / len(components)


@pytest.mark.parametrize("shape", [(4, 7, 6), (9, 8)])
@pytest.mark.parametrize("seed", range(5))
def test_matches_bfs(shape, seed):
    rng = np.random.default_rng(seed)
    ref, pred = rng.random(shape) < 0.15, rng.random(shape) < 0.15
    labeled, n = connected_components(ref)
    components = bfs_components(ref)
    assert n == len(components)
    assert {frozenset(map(tuple, np.argwhere(labeled == k).tolist())) for k in range(1, n + 1)} == \
        {frozenset(c) for c in components}
    recall, precision = brute_fraction(ref, pred), brute_fraction(pred, ref)
    assert lesion_recall(ref, pred) == pytest.approx(recall)
    assert lesion_precision(ref, pred) == pytest.approx(precision)
    f1 = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    assert lesion_f1(ref, pred) == pytest.approx(f1)
    assert lesion_metrics(ref, pred) == pytest.approx(
        {"lesion_recall": recall, "lesion_precision": precision, "lesion_f1": f1})


def test_diagonal_voxels_are_one_lesion_and_known_counts():
    ref = np.zeros((3, 6, 6), bool)
    ref[0, 0, 0] = ref[1, 1, 1] = True  # corner-touching: one lesion with 26-connectivity
    ref[2, 4, 4] = True  # second lesion
    pred = np.zeros_like(ref)
    pred[1, 1, 1] = True  # hits lesion 1
    pred[0, 4, 0] = pred[0, 5, 1] = True  # one false-positive lesion (8-connected in plane)
    assert connected_components(ref)[1] == 2
    assert lesion_recall(ref, pred) == 0.5
    assert lesion_precision(ref, pred) == 0.5
    assert lesion_f1(ref, pred) == 0.5


def test_empty_masks():
    empty = np.zeros((3, 4, 4), bool)
    full = np.ones((3, 4, 4), bool)
    assert lesion_metrics(empty, empty) == {"lesion_recall": 1.0, "lesion_precision": 1.0, "lesion_f1": 1.0}
    assert lesion_metrics(full, empty) == {"lesion_recall": 0.0, "lesion_precision": 1.0, "lesion_f1": 0.0}
    assert lesion_metrics(empty, full) == {"lesion_recall": 1.0, "lesion_precision": 0.0, "lesion_f1": 0.0}


def test_avd():
    ref, pred = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    ref[:2] = True  # 8 voxels
    pred[:3, :2] = True  # 6 voxels
    assert avd(ref, pred) == pytest.approx(abs(8 - 6) / 8 * 100)
    assert avd(pred, ref) == pytest.approx(abs(6 - 8) / 6 * 100)
    assert math.isnan(avd(np.zeros_like(ref), pred))
