"""Batch planning covers every (fold, patch, member) once, in full batches; memory-based batch sizes."""
import dataclasses
import math
from collections import Counter

import pytest
from torch import nn

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.batching import (
    MAX_WINDOW_BATCHES,
    batch_size_for_budget,
    estimate_sample_bytes,
    plan_windows,
    window_length,
)
from nnunet_pdddpm.inference.ensemble_sampling import members_per_fold, sampling_batch_size
from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings
from nnunet_pdddpm.networks import TimeConditionedUNet

AWKWARD = [  # (patches, folds, members, batch size)
    (7, 1, 5, 16), (1, 2, 5, 16), (13, 3, 3, 10), (3, 2, 7, 4), (100, 1, 5, 64), (5, 1, 1, 1), (12, 5, 5, 16),
    (4, 1, 5, 20), (9, 2, 4, 3), (2, 1, 3, 100),
]


@pytest.mark.parametrize("fixed_shape", [False, True])
@pytest.mark.parametrize("patches, folds, members, batch", AWKWARD)
def test_every_sample_once_in_full_batches(patches, folds, members, batch, fixed_shape):
    windows = plan_windows(patches, [members] * folds, batch, fixed_shape)
    seen = Counter((b.fold, j.patch, j.member) for w in windows for b in w.batches for j in b.jobs)
    assert seen == Counter((f, p, m) for f in range(folds) for p in range(patches) for m in range(members))
    batches = [b for w in windows for b in w.batches]
    assert all(1 <= len(b.jobs) <= batch for b in batches)
    if fixed_shape:
        assert all(b.size == batch and b.padding == batch - len(b.jobs) for b in batches)
    else:
        assert all(b.padding == 0 for b in batches)
    # as few denoiser calls as the sample count allows
    assert len(batches) == folds * math.ceil(patches * members / batch)


@pytest.mark.parametrize("patches, folds, members, batch", AWKWARD)
def test_windows_partition_patches_and_keep_the_summation_order(patches, folds, members, batch):
    windows = plan_windows(patches, [members] * folds, batch)
    assert [p for w in windows for p in w.patches] == list(range(patches))
    for w in windows:
        batch_patches = {j.patch for b in w.batches for j in b.jobs}
        assert batch_patches == set(w.patches)  # a window's batches sample only its own patches
        for p in w.patches:  # fold by fold, members in order: the order in which probabilities are summed
            order = [(b.fold, j.member) for b in w.batches for j in b.jobs if j.patch == p]
            assert order == [(f, m) for f in range(folds) for m in range(members)]


def test_window_length_bounds():
    assert window_length(0, 5, 16) == 1
    assert window_length(3, 5, 16) == 3  # fewer patches than one batch needs
    for patches, members, batch in [(1000, 5, 16), (1000, 1, 1), (1000, 7, 64)]:
        g = window_length(patches, members, batch)
        assert math.ceil(batch / members) <= g <= max(math.ceil(batch / members), MAX_WINDOW_BATCHES * batch // members)


def test_invalid_plans_are_refused():
    for members, batch in [([5], 0), ([], 4), ([0, 0], 4), ([2, -1], 4)]:
        with pytest.raises(ValueError):
            plan_windows(3, members, batch)


@pytest.mark.parametrize("members", [(3, 2), (1, 1, 1, 1, 1), (2, 0), (4, 3, 3)])
def test_uneven_members_per_fold_are_each_sampled_once(members):
    windows = plan_windows(7, members, 4)
    seen = Counter((b.fold, j.patch, j.member) for w in windows for b in w.batches for j in b.jobs)
    assert seen == Counter((f, p, m) for f, n in enumerate(members) for p in range(7) for m in range(n))
    assert not any(b.fold == f for w in windows for b in w.batches for f, n in enumerate(members) if n == 0)


@pytest.mark.parametrize("total, folds, expected", [(5, 1, (5,)), (5, 2, (3, 2)), (5, 5, (1,) * 5), (7, 3, (3, 2, 2))])
def test_ensemble_is_the_total_per_case_dealt_over_folds(total, folds, expected):
    assert members_per_fold(SamplingSettings(ensemble_size=total), folds) == expected
    assert members_per_fold(SamplingSettings(ensemble_size=total, ensemble_per_fold=True), folds) == (total,) * folds


def test_fewer_samples_than_folds_is_one_sentence():
    with pytest.raises(PDDDPMUserError, match=r"^-ensemble_size 3 is the total number of samples per case, fewer than "
                                              r"the 5 folds .*--ensemble_per_fold\.$"):
        members_per_fold(SamplingSettings(ensemble_size=3), 5)


def small_denoiser(features=(4, 8, 8)) -> nn.Module:
    n = len(features)
    return TimeConditionedUNet(3, 2, n, list(features), nn.Conv2d, [[3, 3]] * n, [[1, 1]] + [[2, 2]] * (n - 1),
                               [2] * n, [2] * (n - 1), nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, nn.LeakyReLU,
                               {"inplace": True}, True, 1, 1)


def test_activation_estimate_scales_with_the_patch_and_allocates_nothing():
    net = small_denoiser()
    small = estimate_sample_bytes(net, (3, 32, 48))
    large = estimate_sample_bytes(net, (3, 64, 96))
    assert small > 4 * 32 * 48 * 4  # at least the first stage's 4 feature maps, in float32
    assert 3.5 < large / small < 4.5  # activations grow with the patch area
    huge = estimate_sample_bytes(net, (3, 4096, 4096))  # 64 GiB-class: only fake tensors can run it
    assert huge > 2 ** 30


def test_batch_size_follows_the_memory_budget():
    assert batch_size_for_budget(16, None, 10 ** 9) == 16
    assert batch_size_for_budget(16, 10.0, 10 ** 9) == 1  # never below one sample
    assert batch_size_for_budget(16, 5.5e9, 10 ** 9) == 5
    assert batch_size_for_budget(16, 1e12, 10 ** 9) == 16
    net = small_denoiser()
    per_sample = estimate_sample_bytes(net, (3, 32, 48))
    performance = PerformanceSettings(max_batch_size=64, memory_budget_gb=3.5 * per_sample / 2 ** 30)
    assert sampling_batch_size(performance, net, (3, 32, 48)) == 3
    assert sampling_batch_size(PerformanceSettings(max_batch_size=9), net, (3, 32, 48)) == 9


def test_settings_are_validated_when_made_and_stay_frozen():
    from nnunet_pdddpm.errors import PDDDPMUserError

    with pytest.raises(PDDDPMUserError, match="-memory_budget_gb must be positive"):
        PerformanceSettings(memory_budget_gb=0)
    with pytest.raises(PDDDPMUserError, match="-max_batch_size must be at least 1"):
        PerformanceSettings(max_batch_size=0)
    with pytest.raises(PDDDPMUserError, match="-ensemble_size must be at least 1"):
        SamplingSettings(ensemble_size=0)
    settings = SamplingSettings(steps=5)
    with pytest.raises(PDDDPMUserError, match="-steps must be at least 1"):
        dataclasses.replace(settings, steps=0)  # replace validates again
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.t_prime = 10  # type: ignore[misc]
    with pytest.raises(PDDDPMUserError, match="-t_prime must be between 0 and T=1000"):
        SamplingSettings(t_prime=1001).validate(1000)


def test_a_new_sampler_without_steps_drops_the_old_steps():
    trained = SamplingSettings(sampler="ddim", steps=5)
    assert trained.with_overrides(sampler="ddpm") == SamplingSettings(sampler="ddpm", steps=None)
    assert trained.with_overrides(sampler="dpm++", steps=3).steps == 3
    assert trained.with_overrides(sampler=None, steps=None, t_prime=50) == SamplingSettings(
        sampler="ddim", steps=5, t_prime=50)
