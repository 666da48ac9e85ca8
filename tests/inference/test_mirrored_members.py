"""Mirrored members (``SamplingSettings.mirrored_members``): member m sees the case mirrored along nnU-Net's m-th
mirror combination, and its result is mirrored back."""
import itertools

import pytest
import torch
from test_fast_paths import case_inputs, tiny_denoiser
from torch import nn

from nnunet_pdddpm.diffusion import DiffusionConfig, make_ddpm_scheduler
from nnunet_pdddpm.inference.batching import Batch, Job
from nnunet_pdddpm.inference.compiled import SamplingDenoiser
from nnunet_pdddpm.inference.ensemble_sampling import (
    CaseWindows,
    FoldDenoisers,
    SamplingRun,
    _sample_batch,
    case_seed,
    member_mirrorings,
    sample_case,
)
from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings

CPU = torch.device("cpu")


def test_members_take_nnunets_mirror_combinations_in_turn():
    assert member_mirrorings((0, 1), 5) == [(), (0,), (1,), (0, 1), ()]
    assert member_mirrorings((1, 0), 2) == [(), (0,)]  # the order the model lists its axes in does not matter
    every_subset = {c for k in range(4) for c in itertools.combinations((0, 1, 2), k)}
    assert set(member_mirrorings((0, 1, 2), 8)) == every_subset and len(every_subset) == 8
    assert member_mirrorings((), 3) == [(), (), ()]


class Mirrored(nn.Module):
    """``network`` seen through a mirror: its input flipped along patch ``axes``, its output flipped back. What a
    mirrored member must be, written as a different network instead of inside the sampler."""

    def __init__(self, network: nn.Module, axes: tuple[int, ...]):
        super().__init__()
        self.network, self.dims = network, [a + 2 for a in axes]  # (B, C, *patch)
        self.num_classes = network.num_classes

    def forward(self, x, t):
        return self.network(x.flip(self.dims), t).flip(self.dims) if self.dims else self.network(x, t)


def _batch(network, jobs, mirrorings=None, settings=SamplingSettings(t_prime=300, sampler="ddim", steps=3), fold=0):
    image, x0_pre, slicers, _ = case_inputs()
    config = DiffusionConfig()
    return _sample_batch(SamplingDenoiser(network), image, x0_pre, slicers, Batch(fold, tuple(jobs)), settings,
                         False, config, make_ddpm_scheduler(config), 300, case_seed("case_7"), None, mirrorings)


@torch.inference_mode()
def test_a_mirrored_member_is_the_member_of_the_mirrored_network():
    net = tiny_denoiser(2)
    combos = member_mirrorings((0, 1), 4)
    jobs = [Job(1, m) for m in range(4)]
    together = _batch(net, jobs, combos)  # four orientations in one denoiser call
    for job, combo, row in zip(jobs, combos, together):
        alone = _batch(Mirrored(net, combo), [job])[0]
        torch.testing.assert_close(row, alone, atol=1e-5, rtol=0)
        if combo:  # the network is not mirror-symmetric, so mirroring changes the member
            assert (row - _batch(net, [job])[0]).abs().max() > 1e-3
    torch.testing.assert_close(_batch(net, jobs[:1], [()]), _batch(net, jobs[:1]), atol=0, rtol=0)


@torch.inference_mode()
def test_sample_case_mirrors_members_by_their_index_over_the_folds():
    """Two folds share five members (3 + 2): fold 1's first member is the case's fourth and takes the fourth
    combination; with one member per case nothing is mirrored."""
    nets = (tiny_denoiser(2), tiny_denoiser(3))
    image, x0_pre, slicers, gaussian = case_inputs()
    settings = SamplingSettings(t_prime=300, ensemble_size=5, sampler="ddim", steps=2, seed=1, uncertainty="none")
    run = SamplingRun(PerformanceSettings(max_batch_size=4), CPU)
    mirrored = sample_case(FoldDenoisers(nets), CaseWindows(image, x0_pre, slicers, gaussian, (0, 1)), settings,
                           "case_7", run)
    combos = member_mirrorings((0, 1), 5)
    members = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    expected = torch.zeros_like(mirrored.probabilities)
    weight = torch.zeros(image.shape[1:])
    for p, sl in enumerate(slicers):
        mean = torch.stack([_batch(Mirrored(nets[f], combo), [Job(p, m)], settings=settings, fold=f)[0]
                            for (f, m), combo in zip(members, combos)]).mean(0)
        expected[sl] += mean * gaussian
        weight[sl[1:]] += gaussian
    torch.testing.assert_close(mirrored.probabilities, expected / weight, atol=2e-5, rtol=0)
    plain = sample_case(FoldDenoisers(nets), CaseWindows(image, x0_pre, slicers, gaussian), settings, "case_7", run)
    assert (plain.probabilities - mirrored.probabilities).abs().max() > 1e-3
    one = SamplingSettings(t_prime=300, ensemble_size=1, sampler="ddim", steps=2, seed=1, uncertainty="none")
    torch.testing.assert_close(
        sample_case(FoldDenoisers(nets[:1]), CaseWindows(image, x0_pre, slicers, gaussian, (0, 1)), one, "c", run)
        .probabilities,
        sample_case(FoldDenoisers(nets[:1]), CaseWindows(image, x0_pre, slicers, gaussian), one, "c", run)
        .probabilities, atol=0, rtol=0)


@pytest.mark.parametrize("given", [True, False])
def test_settings_keep_mirrored_members_through_a_checkpoint(given):
    settings = SamplingSettings(mirrored_members=given)
    assert SamplingSettings.from_stored(settings.stored()).mirrored_members is given
    older = {k: v for k, v in settings.stored().items() if k != "mirrored_members"}
    assert SamplingSettings.from_stored(older).mirrored_members is False  # written before 0.2.4: as sampled then
