"""Simulated pre-segmenter errors: each kind changes only what it should, in 2D and 3D, for several classes."""
import pytest
import torch
import torch.nn.functional as F

from nnunet_pdddpm.trainers import pre_segmentation_errors as pse


def _only(monkeypatch, kind: str) -> None:
    """Make every sample get exactly the error ``kind`` (boundary-dilate/erode, miss, spurious)."""
    monkeypatch.setattr(pse, "BOUNDARY_PROBABILITY", 1.0 if kind in ("dilate", "erode") else 0.0)
    monkeypatch.setattr(pse, "MISS_PROBABILITY", 1.0 if kind == "miss" else 0.0)
    monkeypatch.setattr(pse, "SPURIOUS_PROBABILITY", 1.0 if kind == "spurious" else 0.0)
    real = pse._per_sample
    if kind in ("dilate", "erode"):  # the dilate-or-erode coin: all heads or all tails
        def per_sample(p, b, device, ndim):
            coin = 1.0 if kind == "dilate" else 0.0
            return real(coin if p == 0.5 else p, b, device, ndim)
        monkeypatch.setattr(pse, "_per_sample", per_sample)


def _masks(spatial: tuple[int, ...], num_classes: int = 2, batch: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    field = F.interpolate(torch.rand((batch, 1, *[s // 4 for s in spatial]), generator=g), size=spatial,
                          mode="nearest")
    labels = torch.zeros((batch, 1, *spatial), dtype=torch.long)
    for c in range(1, num_classes):
        labels[(field > 1 - 0.15 * c) & (labels == 0)] = c
    return labels


def _dilate(fg: torch.Tensor) -> torch.Tensor:
    pool = F.max_pool2d if fg.ndim == 4 else F.max_pool3d
    return pool(fg.float(), 3, stride=1, padding=1) > 0


@pytest.mark.parametrize("spatial", [(32, 40), (8, 24, 32)])
def test_dilation_adds_exactly_the_one_voxel_ring(monkeypatch, spatial):
    _only(monkeypatch, "dilate")
    labels = _masks(spatial)
    out = pse.simulate_pre_segmentation_errors(labels, 2)
    assert torch.equal(out > 0, _dilate(labels > 0))


@pytest.mark.parametrize("spatial", [(32, 40), (8, 24, 32)])
def test_erosion_removes_exactly_the_edge(monkeypatch, spatial):
    _only(monkeypatch, "erode")
    labels = _masks(spatial)
    out = pse.simulate_pre_segmentation_errors(labels, 2)
    assert torch.equal(out > 0, ~_dilate(labels == 0))


def test_missed_parts_only_remove_foreground_in_whole_cells(monkeypatch):
    _only(monkeypatch, "miss")
    torch.manual_seed(0)
    labels = _masks((64, 64), batch=8)
    out = pse.simulate_pre_segmentation_errors(labels, 2)
    assert not ((out > 0) & (labels == 0)).any()  # nothing added
    lost = (labels > 0) & (out == 0)
    assert lost.any()
    # removal is decided per 8x8 cell: within a cell, foreground is either all kept or all removed
    kept = (out > 0).float().reshape(8, 1, 8, 8, 8, 8)
    fg = (labels > 0).float().reshape(8, 1, 8, 8, 8, 8)
    kept_frac = kept.sum((3, 5)) / fg.sum((3, 5)).clamp_min(1)
    assert torch.all((kept_frac == 0) | (kept_frac == 1))


def test_spurious_blobs_add_about_one_percent_of_a_foreground_class(monkeypatch):
    _only(monkeypatch, "spurious")
    torch.manual_seed(0)
    labels = _masks((64, 64), num_classes=3, batch=8)
    out = pse.simulate_pre_segmentation_errors(labels, 3)
    changed = out != labels
    assert torch.equal(labels[~changed], out[~changed]) and (labels[changed] == 0).all()  # only background changes
    added = changed.float().mean((1, 2, 3))
    assert torch.all(added <= pse.SPURIOUS_VOXEL_FRACTION + 1e-3) and added.mean() > 0.003
    for i in range(8):  # one class per sample, a foreground one
        assert out[i][changed[i]].unique().numel() == 1 and out[i][changed[i]].min() >= 1


def test_default_mix_keeps_labels_valid_and_leaves_some_samples_unchanged():
    torch.manual_seed(1)
    labels = _masks((32, 32), num_classes=3, batch=64)
    out = pse.simulate_pre_segmentation_errors(labels, 3)
    assert out.shape == labels.shape and out.dtype == labels.dtype
    assert set(out.unique().tolist()) <= {0, 1, 2}
    same = (out == labels).flatten(1).all(1)
    # P(no error) = 0.5 ** 3; a miss or a blob can be empty, so somewhat more
    assert 0.05 < same.float().mean() < 0.4
