"""PD-DDPM over a sliding window: batched (patch x fold x member) samples, Gaussian-weighted aggregation.

Every sample (patch p, fold f, member m) owns a generator seeded from (seed, case, f, p, m), used
for its forward-diffusion noise and its ancestral noise, so its result does not depend on which
other samples share its batch, nor on how cases are split across processes. Members of the same
patch are combined into a mean probability map and a variance map (population variance over
members and folds, averaged over classes: for a binary dataset, the variance of the foreground
probability), which are then aggregated over patches with nnU-Net's Gaussian weights.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_pdddpm.diffusion import DiffusionConfig, decode_to_probabilities, diffuse, reverse_process, start_index
from nnunet_pdddpm.diffusion.samplers import sampling_timesteps
from nnunet_pdddpm.diffusion.schedule import make_ddpm_scheduler
from nnunet_pdddpm.inference.settings import SamplingSettings


def case_seed(case_key: str | None) -> int:
    """A stable 32-bit number for a case name (``hash()`` differs between processes)."""
    return 0 if case_key is None else zlib.crc32(case_key.encode())


def sample_generator(seed: int, case: int, fold: int, patch: int, member: int, device: torch.device) -> torch.Generator:
    state = np.random.SeedSequence([seed, case, fold, patch, member]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


@dataclass
class CaseResult:
    """Probabilities (K, *shape) summing to 1 over K, uncertainty (*shape), both float32 on the results device."""

    probabilities: torch.Tensor
    uncertainty: torch.Tensor


def number_of_evaluations(num_patches: int, num_folds: int, settings: SamplingSettings, t_prime: int) -> int:
    """Denoiser evaluations (NFE, counted per sample) for a case."""
    return num_patches * num_folds * settings.ensemble_size * len(sampling_timesteps(t_prime, settings.steps))


@torch.inference_mode()
def sample_case(
    networks: Sequence[nn.Module],
    image: torch.Tensor,
    x0_pre: torch.Tensor | None,
    slicers: Sequence[tuple],
    gaussian: torch.Tensor,
    settings: SamplingSettings,
    config: DiffusionConfig,
    case_key: str | None,
    results_device: torch.device,
    autocast: Callable[[], object],
    on_step: Callable[[int], None] | None = None,
) -> CaseResult:
    """Sample every patch of one (padded) case.

    networks: one denoiser per fold (on the compute device). image: (C, *shape) on the compute device.
    x0_pre: encoded pre-segmentation (K, *shape) in [-1, 1], or None for the vanilla baseline.
    slicers: nnU-Net's sliding-window slicers; each selects (channels, *patch) (2D configurations on 3D
    data index one slice). gaussian: nnU-Net's patch weights (*patch).
    """
    t_prime = settings.effective_t_prime(config.num_train_timesteps)
    num_members = settings.ensemble_size * len(networks)
    num_classes = networks[0].num_classes
    spatial = image.shape[1:]
    probs_acc = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=results_device)
    unc_acc = torch.zeros(spatial, dtype=torch.float32, device=results_device)
    weight_acc = torch.zeros(spatial, dtype=torch.float32, device=results_device)
    gaussian = gaussian.to(results_device, torch.float32)
    scheduler = make_ddpm_scheduler(config)
    cseed = case_seed(case_key)
    patches_per_group = max(1, settings.max_batch_size // settings.ensemble_size)

    for g0 in range(0, len(slicers), patches_per_group):
        group = list(range(g0, min(g0 + patches_per_group, len(slicers))))
        s1 = {p: 0.0 for p in group}
        s2 = {p: 0.0 for p in group}
        for fold, net in enumerate(networks):
            jobs = [(p, m) for p in group for m in range(settings.ensemble_size)]
            for c0 in range(0, len(jobs), settings.max_batch_size):
                chunk = jobs[c0:c0 + settings.max_batch_size]
                probs = _sample_chunk(net, image, x0_pre, slicers, chunk, fold, settings, config, scheduler, t_prime,
                                      cseed, autocast, on_step).to(results_device)
                for (p, _), pr in zip(chunk, probs):
                    s1[p] = s1[p] + pr
                    s2[p] = s2[p] + pr * pr
        for p in group:
            mean = s1[p] / num_members
            var = (s2[p] / num_members - mean * mean).clamp_min(0).mean(0)
            sl = slicers[p]
            probs_acc[sl] += mean * gaussian
            unc_acc[sl[1:]] += var * gaussian
            weight_acc[sl[1:]] += gaussian
    probs_acc /= weight_acc
    unc_acc /= weight_acc
    return CaseResult(probs_acc, unc_acc)


def _sample_chunk(net, image, x0_pre, slicers, chunk, fold, settings, config, scheduler, t_prime, cseed, autocast,
                  on_step) -> torch.Tensor:
    """Reverse process for a batch of (patch, member) jobs of one fold -> decoded probabilities (B, K, *patch)."""
    device = image.device
    gens = [sample_generator(settings.seed, cseed, fold, p, m, device) for p, m in chunk]
    img = torch.stack([image[slicers[p]] for p, _ in chunk])
    num_classes = net.num_classes
    patch_shape = img.shape[2:]
    noise = torch.stack([torch.randn((num_classes, *patch_shape), generator=g, device=device) for g in gens])
    if x0_pre is None:
        x_start = noise
    elif t_prime == 0:
        x_start = torch.stack([x0_pre[slicers[p]] for p, _ in chunk]).float()
    else:
        x0 = torch.stack([x0_pre[slicers[p]] for p, _ in chunk]).float()
        t = torch.full((len(chunk),), start_index(t_prime), dtype=torch.long, device=device)
        x_start = diffuse(scheduler, x0, noise, t)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast():
            return net(torch.cat((img, x_t), 1), t).float()

    step_done = None if on_step is None else (lambda: on_step(len(chunk)))
    x0_hat = reverse_process(model_fn, x_start, t_prime, config, settings.sampler, settings.steps, gens, step_done)
    return decode_to_probabilities(x0_hat)
