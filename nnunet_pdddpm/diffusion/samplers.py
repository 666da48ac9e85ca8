"""The reverse process from T' to 0 with diffusers' schedulers.

``ddpm`` is the paper's ancestral sampler (every index T'-1, ..., 0 unless ``steps`` is given).
``ddim`` and ``dpm++`` are diffusers' ``DPMSolverMultistepScheduler`` in data-prediction form of
order 1 and 2; order 1 is exactly deterministic DDIM (eta = 0). All samplers evaluate the network
at ``steps`` timesteps spaced like diffusers' "trailing" spacing but starting at T' - 1, so the
first evaluation happens where the forward diffusion stopped (see ``schedule.py``).

Both entry points run one loop (network evaluation, step, progress) and differ only in the step they
build: :func:`reverse_process` steps ``ddpm`` with precomputed coefficients (``fast_ddpm.py``: no host
synchronisation per step, the same numbers as diffusers' ``step``); :func:`reverse_process_reference`
calls diffusers' ``step`` for every sampler and is kept as the reference the fast path is tested against.
The DPM-Solver samplers use diffusers' step on both paths.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

from nnunet_pdddpm.diffusion.config import DiffusionConfig
from nnunet_pdddpm.diffusion.fast_ddpm import DDPMStepCoefficients, per_sample_noise
from nnunet_pdddpm.diffusion.schedule import make_ddpm_scheduler

SAMPLERS = ("ddpm", "ddim", "dpm++")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``model_fn(x_t, timesteps) -> model output``: x_t (B, K, ...), timesteps (B,) long."""


def sampling_timesteps(t_prime: int, steps: int | None = None) -> list[int]:
    """Descending timestep indices at which the network is evaluated; ``len`` is the NFE.

    ``steps=None`` (or ``steps == t_prime``) gives every index ``t_prime - 1, ..., 0``; more steps than T' is
    an error, not a silent "every step" (``SamplingSettings.resolve`` says it in one sentence first).
    """
    if t_prime < 1:
        return []
    if steps is not None and steps > t_prime:
        raise ValueError(f"{steps} sampling steps exceed T'={t_prime}: a reverse process from T' has only T' steps")
    if steps is None or steps == t_prime:
        return list(range(t_prime - 1, -1, -1))
    if steps < 1:
        raise ValueError("steps must be at least 1")
    ts = np.round(np.arange(t_prime, 0, -t_prime / steps)).astype(np.int64) - 1
    return sorted({int(t) for t in ts}, reverse=True)


def make_sampler_scheduler(config: DiffusionConfig, sampler: str):
    """A fresh diffusers scheduler for ``sampler`` (stateful, so one per reverse process).

    The x0 estimate is clipped to [-1, 1] by every sampler when ``config.clip_sample`` (the default): DDPM
    through ``clip_sample``, the DPM-Solver samplers through ``thresholding`` with ``sample_max_value=1``
    (the dynamic threshold is then exactly 1). Without it, the step from index 999 multiplies the model's
    rounding error by sqrt((1 - alpha_bar) / alpha_bar), about 2e4 there, and sampling from noise fails.
    """
    if sampler == "ddpm":
        return make_ddpm_scheduler(config)
    if sampler in ("ddim", "dpm++"):
        return DPMSolverMultistepScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            algorithm_type="dpmsolver++",
            solver_order=1 if sampler == "ddim" else 2,
            thresholding=config.clip_sample,
            sample_max_value=1.0,
            lower_order_final=True,
            final_sigmas_type="zero",
        )
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")


StepFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``step(i, model_output, x) -> x at the next timestep``: the update of the i-th sampling timestep."""

StepFactory = Callable[[DiffusionConfig, str, list[int], torch.device, list[torch.Generator] | None], StepFn]
"""``factory(config, sampler, timesteps, device, generators) -> step``: built once per reverse process."""


def _checked_generators(generators: Sequence[torch.Generator] | None, x: torch.Tensor) -> list | None:
    gen = list(generators) if generators is not None else None
    if gen is not None and len(gen) != x.shape[0]:
        raise ValueError(f"need one generator per batch element ({x.shape[0]}), got {len(gen)}")
    return gen


def _diffusers_step(config: DiffusionConfig, sampler: str, timesteps: list[int], device: torch.device,
                    gen: list[torch.Generator] | None) -> StepFn:
    """diffusers' ``scheduler.step`` (the reference of every sampler); stateful, so a fresh scheduler per process.

    Only ``ddpm`` draws noise (ancestral); the DPM-Solver samplers are deterministic and take no generator.
    """
    scheduler = make_sampler_scheduler(config, sampler)
    scheduler.set_timesteps(timesteps=timesteps, device=device)
    noise_kwargs = {"generator": gen} if sampler == "ddpm" else {}

    def step(i: int, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return scheduler.step(out, timesteps[i], x, **noise_kwargs).prev_sample

    return step


def _fast_step(config: DiffusionConfig, sampler: str, timesteps: list[int], device: torch.device,
               gen: list[torch.Generator] | None) -> StepFn:
    """``ddpm`` as precomputed tensor ops (``fast_ddpm.py``), the same numbers as diffusers' step without its host
    syncs; the other samplers through diffusers (DPMSolverMultistepScheduler keeps its sigmas on the CPU and syncs
    only once, at the first step index)."""
    if sampler != "ddpm":
        return _diffusers_step(config, sampler, timesteps, device, gen)
    coeffs = DDPMStepCoefficients.from_scheduler(make_ddpm_scheduler(config), timesteps, device)

    def step(i: int, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return coeffs.step(i, out, x, per_sample_noise(out, gen) if coeffs.adds_noise(i) else None)

    return step


def _reverse(
    make_step: StepFactory,
    model_fn: ModelFn,
    x_start: torch.Tensor,
    t_prime: int,
    config: DiffusionConfig,
    sampler: str,
    steps: int | None,
    generators: Sequence[torch.Generator] | None,
    on_step: Callable[[], None] | None,
) -> torch.Tensor:
    """The loop both public functions share: evaluate the network, take ``make_step``'s step, report progress."""
    timesteps = sampling_timesteps(t_prime, steps)
    if not timesteps:
        return x_start
    gen = _checked_generators(generators, x_start)
    step = make_step(config, sampler, timesteps, x_start.device, gen)
    # one device tensor of all timesteps: model_fn gets views of it, no host-to-device copy per step
    all_t = torch.tensor(timesteps, dtype=torch.long, device=x_start.device)
    batch = x_start.shape[0]
    x = x_start
    for i in range(len(timesteps)):
        out = model_fn(x, all_t[i].expand(batch)).to(x.dtype)
        x = step(i, out, x)
        if on_step is not None:
            on_step()
    return x


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
    network evaluation (progress bars). The timesteps passed to ``model_fn`` are views of one device
    tensor (no host-to-device copy per step). Same result as :func:`reverse_process_reference`.
    """
    return _reverse(_fast_step, model_fn, x_start, t_prime, config, sampler, steps, generators, on_step)


def reverse_process_reference(
    model_fn: ModelFn,
    x_start: torch.Tensor,
    t_prime: int,
    config: DiffusionConfig,
    sampler: str = "ddpm",
    steps: int | None = None,
    generators: Sequence[torch.Generator] | None = None,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """:func:`reverse_process` with diffusers' ``scheduler.step`` for every sampler (the plain path).

    Slow on a GPU (DDPMScheduler.step synchronises with the host every step); kept as the reference.
    """
    return _reverse(_diffusers_step, model_fn, x_start, t_prime, config, sampler, steps, generators, on_step)
