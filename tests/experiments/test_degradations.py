"""Degraded pre-segmentations for the pre-segmentation-quality experiment: what each kind does to a mask."""
import numpy as np
import pytest
import torch

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.experiments.pre_segmentations import Degradation, DegradedPreSegmentation
from nnunet_pdddpm.inference.pre_segmentation import CachedPreSegmentation


def probabilities(mask: np.ndarray) -> torch.Tensor:
    """(2, z, y, x) hard probabilities of a binary mask."""
    fg = torch.from_numpy(mask.astype(np.float32))
    return torch.stack([1 - fg, fg])


@pytest.fixture
def square():
    mask = np.zeros((3, 9, 9), bool)
    mask[1, 2:7, 2:7] = True
    return mask


def foreground(probs: torch.Tensor) -> np.ndarray:
    return probs.argmax(0).numpy() == 1


def test_parse_names_and_refusals():
    assert Degradation.parse("zero") == Degradation("zero")
    assert Degradation.parse("erode:2").name == "erode 2"
    assert Degradation.parse("noise:0.25") == Degradation("noise", 0.25)
    for bad in ("blur:1", "erode", "erode:1.5", "dilate:-1", "noise:x"):
        with pytest.raises(PDDDPMUserError):
            Degradation.parse(bad)


def test_zero_erode_dilate_act_in_plane(square):
    probs = probabilities(square)
    assert not foreground(Degradation("zero").apply(probs, "c")).any()
    eroded = foreground(Degradation("erode", 1).apply(probs, "c"))
    assert eroded.sum() == 9 and eroded[1, 3:6, 3:6].all()
    dilated = foreground(Degradation("dilate", 1).apply(probs, "c"))
    assert dilated.sum() == 25 + 4 * 5
    assert not dilated[[0, 2]].any()  # nothing spills into the neighbouring slices
    for kind in ("zero", "erode", "dilate"):
        out = Degradation(kind, 1).apply(probs, "c")
        assert out.shape == probs.shape and torch.allclose(out.sum(0), torch.ones(3, 9, 9))


def test_noise_is_seeded_per_case_and_grows_with_strength(square):
    probs = probabilities(square)
    weak, strong = Degradation("noise", 0.2), Degradation("noise", 1.0)
    assert torch.equal(weak.apply(probs, "a", seed=1), weak.apply(probs, "a", seed=1))
    assert not torch.equal(weak.apply(probs, "a", seed=1), weak.apply(probs, "b", seed=1))
    flips = [(foreground(d.apply(probs, "a")) != square).sum() for d in (Degradation("noise", 0.0), weak, strong)]
    assert flips[0] == 0 and flips[1] <= flips[2] and flips[2] > 0
    out = strong.apply(probs, "a")
    assert (out >= 0).all() and torch.allclose(out.sum(0), torch.ones(3, 9, 9))


def test_cache_runs_the_source_once_per_case(square):
    calls = []

    class Source:
        def probabilities(self, data, properties, case_key):
            calls.append(case_key)
            return probabilities(square)

        def describe(self):
            return "source"

        def check_case(self, case_key):
            pass

    cache = CachedPreSegmentation(Source(), count_nfe=lambda data: 7)
    degraded = DegradedPreSegmentation(cache, Degradation("erode", 1))
    for _ in range(2):
        cache.probabilities(torch.zeros(1), {}, "a")
        degraded.probabilities(torch.zeros(1), {}, "a")
    assert calls == ["a"] and cache.nfe == {"a": 7} and degraded.nfe == {"a": 7}
    assert foreground(degraded.probabilities(torch.zeros(1), {}, "a")).sum() == 9


def test_cases_without_a_key_are_never_served_from_the_cache():
    class Source:  # the probabilities follow the data, so a stale cache entry shows
        def probabilities(self, data, properties, case_key):
            return torch.stack([1 - data, data])

        def describe(self):
            return "source"

        def check_case(self, case_key):
            pass

    cache = CachedPreSegmentation(Source())
    first = cache.probabilities(torch.zeros(1, 4), {}, None)
    second = cache.probabilities(torch.ones(1, 4), {}, None)
    assert first[1].sum() == 0 and second[1].sum() == 4 and cache.cache == {}
