"""The reverse process from T' to 0 with diffusers' schedulers.

``ddpm`` is the paper's ancestral sampler (every index T'-1, ..., 0 unless ``steps`` is given).
``ddim`` and ``dpm++`` are diffusers' ``DPMSolverMultistepScheduler`` in data-prediction form of
order 1 and 2; order 1 is exactly deterministic DDIM (eta = 0). All samplers evaluate the network
at ``steps`` timesteps spaced like diffusers' "trailing" spacing but starting at T' - 1, so the
first evaluation happens where the forward diffusion stopped (see ``schedule.py``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

from nnunet_pdddpm.diffusion.config import DiffusionConfig
from nnunet_pdddpm.diffusion.schedule import make_ddpm_scheduler

SAMPLERS = ("ddpm", "ddim", "dpm++")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``model_fn(x_t, timesteps) -> model output``: x_t (B, K, ...), timesteps (B,) long."""


def sampling_timesteps(t_prime: int, steps: int | None = None) -> list[int]:
    """Descending timestep indices at which the network is evaluated; ``len`` is the NFE.

    ``steps=None`` (or ``steps >= t_prime``) gives every index ``t_prime - 1, ..., 0``.
    """
    if t_prime < 1:
        return []
    if steps is None or steps >= t_prime:
        return list(range(t_prime - 1, -1, -1))
    if steps < 1:
        raise ValueError("steps must be at least 1")
    ts = np.round(np.arange(t_prime, 0, -t_prime / steps)).astype(np.int64) - 1
    return sorted({int(t) for t in ts}, reverse=True)


def make_sampler_scheduler(config: DiffusionConfig, sampler: str):
    """A fresh diffusers scheduler for ``sampler`` (stateful, so one per reverse process)."""
    if sampler == "ddpm":
        return make_ddpm_scheduler(config)
    if sampler in ("ddim", "dpm++"):
        return DPMSolverMultistepScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            algorithm_type="dpmsolver++",
            solver_order=1 if sampler == "ddim" else 2,
            thresholding=False,
            lower_order_final=True,
            final_sigmas_type="zero",
        )
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")


def reverse_process(
    model_fn: ModelFn,
    x_start: torch.Tensor,
    t_prime: int,
    config: DiffusionConfig,
    sampler: str = "ddpm",
    steps: int | None = None,
    generators: Sequence[torch.Generator] | None = None,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Denoise ``x_start`` (B, K, ...), which lives at index ``t_prime - 1``, down to x_0.

    ``generators`` holds one generator per batch element for the ancestral noise of ``ddpm``, so a
    sample does not depend on which other samples share its batch. Returns x_0 (B, K, ...) in
    roughly [-1, 1]; ``t_prime = 0`` returns ``x_start`` unchanged. ``on_step`` is called after every
    network evaluation (progress bars).
    """
    timesteps = sampling_timesteps(t_prime, steps)
    if not timesteps:
        return x_start
    scheduler = make_sampler_scheduler(config, sampler)
    scheduler.set_timesteps(timesteps=timesteps, device=x_start.device)
    gen = list(generators) if generators is not None else None
    if gen is not None and len(gen) != x_start.shape[0]:
        raise ValueError(f"need one generator per batch element ({x_start.shape[0]}), got {len(gen)}")
    x = x_start
    for t in timesteps:
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = model_fn(x, t_batch).to(x.dtype)
        if sampler == "ddpm":
            x = scheduler.step(out, t, x, generator=gen).prev_sample
        else:
            x = scheduler.step(out, t, x).prev_sample
        if on_step is not None:
            on_step()
    return x
