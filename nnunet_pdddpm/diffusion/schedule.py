"""Forward process and parameterisations on top of diffusers' ``DDPMScheduler``.

Index convention (used by training and inference alike): "diffuse to T'" means

    x_{T'} = sqrt(alpha_bar[T' - 1]) * x_0 + sqrt(1 - alpha_bar[T' - 1]) * eps,

i.e. diffusers' ``add_noise`` at timestep index ``T' - 1`` (the paper's step t = T' is index
T' - 1). The first denoising step evaluates the network at index ``T' - 1`` and the last at
index 0, so PD-DDPM with ``t_prime`` steps costs exactly ``t_prime`` network evaluations and
``t_prime = T`` is the full reverse process. ``t_prime = 0`` means no diffusion at all.
"""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from nnunet_pdddpm.diffusion.config import DiffusionConfig


def make_ddpm_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The training/ancestral scheduler: cosine schedule (Nichol & Dhariwal) with T steps."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=config.clip_sample,
        clip_sample_range=1.0,
    )


def start_index(t_prime: int) -> int:
    """Timestep index at which a sample diffused to ``t_prime`` lives (see module docstring)."""
    return t_prime - 1


def _broadcast(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = values.to(like.device)[timesteps.to(like.device).long()].to(like.dtype)
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def alpha_bar(scheduler: DDPMScheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``alpha_bar[t]`` per batch element, shaped to broadcast against ``like`` (B, C, ...)."""
    return _broadcast(scheduler.alphas_cumprod, timesteps, like)


def diffuse(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Forward rule q(x_t | x_0) at per-element timestep indices (B,)."""
    return scheduler.add_noise(x0, noise, timesteps.to(x0.device))


def training_target(
    scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the network should output for ``scheduler.config.prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, timesteps.to(x0.device))


def model_output(config: DiffusionConfig, network_output: torch.Tensor) -> torch.Tensor:
    """The network's raw output as the model output the samplers expect (``config.output_activation``)."""
    if config.output_activation == "softmax":
        return 2 * torch.softmax(network_output, 1) - 1
    return network_output


def x0_from_model_output(prediction_type: str, model_output: torch.Tensor, x_t: torch.Tensor,
                         sqrt_alpha_prod: torch.Tensor, sqrt_beta_prod: torch.Tensor) -> torch.Tensor:
    """The clean-mask estimate implied by ``model_output`` at ``x_t`` (closed form, no clipping).

    ``sqrt_alpha_prod`` = sqrt(alpha_bar_t) and ``sqrt_beta_prod`` = sqrt(1 - alpha_bar_t), broadcastable against
    ``x_t``. The caller computes them, in the precision and order it needs: :func:`predict_x0` in ``x_t``'s dtype,
    the sampler's tensor step (``fast_ddpm.py``) in float32 as diffusers does, which keeps it bit-identical to
    ``DDPMScheduler.step``. The expressions are diffusers' (``pred_original_sample``), in its order of operations.
    """
    if prediction_type == "epsilon":
        return (x_t - sqrt_beta_prod * model_output) / sqrt_alpha_prod
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return sqrt_alpha_prod * x_t - sqrt_beta_prod * model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def predict_x0(
    scheduler: DDPMScheduler, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The clean-mask estimate implied by the network output at ``x_t`` at per-element timestep indices (B,)."""
    ab = alpha_bar(scheduler, timesteps, x_t)
    return x0_from_model_output(scheduler.config.prediction_type, model_output, x_t, ab.sqrt(), (1 - ab).sqrt())
