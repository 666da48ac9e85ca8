"""Every sampler against an exact model of a known prior, with the model's outputs rounded to bf16.

Prior: each voxel is +1 with probability P, else -1, independently. Then E[x0 | x_t] is closed-form,
``tanh(logit(P) / 2 + sqrt(ab) x_t / (1 - ab))``, and so is the exact epsilon. A correct sampler started
from pure noise at T must end with a fraction P of positive voxels; started from a sample of the prior
diffused to T' (PD-DDPM), it must also keep most voxels of that sample. bf16 rounding stands for a real
network's error: without clipping x0, DPM-Solver's first step from index 999 amplifies it ~2e4 times.
"""
import math

import pytest
import torch

from nnunet_pdddpm.diffusion import DiffusionConfig, diffuse, make_ddpm_scheduler, start_index
from nnunet_pdddpm.diffusion.samplers import reverse_process, reverse_process_reference

P = 0.9
CONFIG = DiffusionConfig()
SHAPE = (4, 1, 32, 32)  # 4096 voxels: the fraction's standard error is 0.5 %


def exact_epsilon_model(config: DiffusionConfig):
    alphas_cumprod = make_ddpm_scheduler(config).alphas_cumprod.double()
    prior_logit = math.log(P / (1 - P))

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = alphas_cumprod[t].reshape(-1, *([1] * (x_t.ndim - 1)))
        x = x_t.double()
        x0 = torch.tanh(prior_logit / 2 + ab.sqrt() * x / (1 - ab))
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return eps.to(torch.bfloat16).to(x_t.dtype)

    return model_fn


def generators(n: int, seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


SETTINGS = [("ddpm", None), ("ddim", 20), ("dpm++", 20), ("ddim", 10), ("dpm++", 10)]


@pytest.mark.parametrize("process", [reverse_process, reverse_process_reference], ids=["fast", "reference"])
@pytest.mark.parametrize("sampler,steps", SETTINGS)
def test_sampling_from_noise_reproduces_the_prior(process, sampler, steps):
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    x0 = process(exact_epsilon_model(CONFIG), noise, CONFIG.num_train_timesteps, CONFIG, sampler, steps,
                 generators(SHAPE[0], 1))
    positive = (x0 > 0).double().mean().item()
    assert abs(positive - P) < 0.025, f"{sampler}/{steps}: {positive:.3f} positive voxels, expected {P}"
    assert (x0.abs() > 0.9).double().mean().item() > 0.99  # samples end on the two points, not in between


@pytest.mark.parametrize("sampler,steps", SETTINGS)
@pytest.mark.parametrize("t_prime", [100, 300, 600])
def test_pd_ddpm_from_t_prime_keeps_the_start_and_the_prior(sampler, steps, t_prime):
    g = torch.Generator().manual_seed(2)
    x0_true = torch.where(torch.rand(SHAPE, generator=g) < P, 1.0, -1.0)
    scheduler = make_ddpm_scheduler(CONFIG)
    t = torch.full((SHAPE[0],), start_index(t_prime), dtype=torch.long)
    x_start = diffuse(scheduler, x0_true, torch.randn(SHAPE, generator=g), t)
    x0 = reverse_process(exact_epsilon_model(CONFIG), x_start, t_prime, CONFIG, sampler, steps,
                         generators(SHAPE[0], 3))
    ab = scheduler.alphas_cumprod[start_index(t_prime)].double()
    # the exact posterior's chance to return the true value, averaged over these very x_t' (a lower bound on
    # what a deterministic sampler, which follows the posterior's majority, keeps)
    logit = math.log(P / (1 - P)) + 2 * ab.sqrt() * x_start.double() / (1 - ab)
    p_true = torch.where(x0_true > 0, torch.sigmoid(logit), torch.sigmoid(-logit)).mean().item()
    agree = ((x0 > 0) == (x0_true > 0)).double().mean().item()
    assert agree > p_true - 0.02, f"{sampler}/{steps} T'={t_prime}: keeps {agree:.3f}, posterior {p_true:.3f}"
    assert abs((x0 > 0).double().mean().item() - P) < 0.025
