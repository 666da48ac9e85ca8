"""The DDPM ancestral step as precomputed tensors: diffusers' ``DDPMScheduler.step`` without host syncs.

diffusers' ``step`` finds the previous timestep with ``(timesteps == t).nonzero()`` and branches on
0-dim tensor comparisons (``prev_t >= 0``): each is a device-to-host synchronisation, so on a GPU the
host cannot queue the next network call while the current one runs, and every step pays a dozen
small CPU tensor ops. Here the coefficients of all steps are computed once, from the scheduler's
float32 ``alphas_cumprod`` in diffusers' order of operations (``variance_type="fixed_small"``,
Ho et al. eq. 6-7), and a step is a handful of elementwise ops on the device.

The result equals ``scheduler.step(model_output, t, sample, generator=generators).prev_sample`` bit
for bit on the CPU in float32 and float64 when the noise comes from :func:`per_sample_noise` with
the same generators (``tests/inference/test_fast_paths.py``), with one exception: the last step, to x_0,
adds no noise. Its posterior variance is exactly 0, but diffusers clamps it to 1e-20 and, when that step
starts above index 0 (``steps`` < T'), adds 1e-10 times fresh noise; without it every sampler ends exactly
at its last x0 estimate (for a softmax denoiser: 2 softmax - 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import DDPMScheduler

from nnunet_pdddpm.diffusion.schedule import x0_from_model_output


def per_sample_noise(like: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (B, ...), row b drawn from ``generators[b]``.

    Draws the same numbers as diffusers' ``randn_tensor(shape, generator=list)`` (one ``randn`` per
    generator), so a sample's noise does not depend on the other rows of its batch. ``None`` draws
    from the global generator, as diffusers does.
    """
    if generators is None:
        return torch.randn(like.shape, device=like.device, dtype=like.dtype)
    if len(generators) != like.shape[0]:
        raise ValueError(f"need one generator per batch element ({like.shape[0]}), got {len(generators)}")
    noise = torch.empty(like.shape, device=like.device, dtype=like.dtype)
    for row, g in zip(noise, generators):
        row.normal_(generator=g)  # what torch.randn does for a contiguous tensor: the same stream
    return noise


@dataclass(frozen=True)
class DDPMStepCoefficients:
    """Per-step coefficients of the ancestral sampler for a descending timestep list (index i = step i).

    All tensors are (S,) float32 on one device; step i maps x at ``timesteps[i]`` to the next timestep
    in the list (index -1, i.e. alpha_bar = 1, after the last one).
    """

    timesteps: tuple[int, ...]
    sqrt_alpha_prod: torch.Tensor  # sqrt(alpha_bar_t)
    sqrt_beta_prod: torch.Tensor  # sqrt(1 - alpha_bar_t)
    x0_coeff: torch.Tensor  # posterior mean: coefficient of the x0 estimate
    xt_coeff: torch.Tensor  # posterior mean: coefficient of x_t
    noise_std: torch.Tensor  # sqrt of the clamped posterior variance ("fixed_small")
    prediction_type: str
    clip_range: float | None

    @classmethod
    def from_scheduler(cls, scheduler: DDPMScheduler, timesteps: Sequence[int],
                       device: torch.device | str = "cpu") -> "DDPMStepCoefficients":
        """Coefficients for ``timesteps`` (descending indices in [0, T)) of a ``fixed_small`` DDPM scheduler."""
        cfg = scheduler.config
        if cfg.variance_type != "fixed_small" or cfg.thresholding:
            raise ValueError("DDPMStepCoefficients supports variance_type='fixed_small' without thresholding")
        ts = [int(t) for t in timesteps]
        if any(b >= a for a, b in zip(ts, ts[1:])) or (ts and (ts[0] >= cfg.num_train_timesteps or ts[-1] < 0)):
            raise ValueError(f"timesteps must be descending indices in [0, {cfg.num_train_timesteps}), got {ts}")
        ac = scheduler.alphas_cumprod.to("cpu", torch.float32)
        one = torch.tensor(1.0)
        rows = []
        for i, t in enumerate(ts):
            # same float32 expressions, in the same order, as DDPMScheduler.step and _get_variance
            alpha_prod_t = ac[t]
            alpha_prod_t_prev = ac[ts[i + 1]] if i + 1 < len(ts) else one
            beta_prod_t = 1 - alpha_prod_t
            beta_prod_t_prev = 1 - alpha_prod_t_prev
            current_alpha_t = alpha_prod_t / alpha_prod_t_prev
            current_beta_t = 1 - current_alpha_t
            variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
            variance = torch.clamp(variance, min=1e-20)
            rows.append(torch.stack([
                alpha_prod_t ** 0.5,
                beta_prod_t ** 0.5,
                (alpha_prod_t_prev ** 0.5 * current_beta_t) / beta_prod_t,
                current_alpha_t ** 0.5 * beta_prod_t_prev / beta_prod_t,
                variance ** 0.5 if i + 1 < len(ts) else torch.zeros(()),  # the last step ends at x0
            ]))
        table = (torch.stack(rows) if rows else torch.zeros(0, 5)).to(device)
        return cls(tuple(ts), *table.unbind(1), prediction_type=cfg.prediction_type,
                   clip_range=float(cfg.clip_sample_range) if cfg.clip_sample else None)

    def adds_noise(self, i: int) -> bool:
        """Whether step i draws ancestral noise (every step but the last, to x0); known on the host."""
        return i + 1 < len(self.timesteps)

    def predict_x0(self, i: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The clipped x0 estimate of step i (diffusers' ``pred_original_sample``)."""
        x0 = x0_from_model_output(self.prediction_type, model_output, sample, self.sqrt_alpha_prod[i],
                                  self.sqrt_beta_prod[i])
        return x0 if self.clip_range is None else x0.clamp(-self.clip_range, self.clip_range)

    def step(self, i: int, model_output: torch.Tensor, sample: torch.Tensor,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """x at ``timesteps[i]`` (B, K, ...) -> x at the next timestep of the list.

        ``noise`` (shape of ``sample``) is required exactly when :meth:`adds_noise` is true; draw it with
        :func:`per_sample_noise` to reproduce diffusers' step with per-sample generators.
        """
        x0 = self.predict_x0(i, model_output, sample)
        prev = self.x0_coeff[i] * x0 + self.xt_coeff[i] * sample
        if self.adds_noise(i):
            if noise is None:
                raise ValueError(f"step {i} (timestep {self.timesteps[i]}) needs noise")
            prev = prev + self.noise_std[i] * noise
        return prev
