"""Diffusion timestep embedding: sinusoidal features followed by an MLP (DDPM / guided-diffusion convention)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of the diffusion timestep, as in guided-diffusion's ``timestep_embedding``.

    Args:
        timesteps: ``[B]`` integer or float timesteps (raw step index, e.g. in ``[0, 1000)``; not rescaled).
        dim: number of output features; an odd ``dim`` gets one zero-padded column.
        max_period: lowest frequency is ``1 / max_period``.

    Returns:
        ``[B, dim]`` float32 tensor ``[cos(t * f_0..f_{h-1}), sin(t * f_0..f_{h-1})]`` with ``h = dim // 2`` and
        ``f_i = max_period ** (-i / h)``. Always computed in float32: bf16 cannot resolve ``t * f`` for t ~ 1000.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.to(torch.float32)[:, None] * torch.exp(exponent)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedding(nn.Module):
    """``t [B] -> emb [B, embed_dim]``: sinusoidal features of width ``frequency_dim``, then Linear → SiLU → Linear.

    Every time-conditioned block of the denoiser projects this one shared embedding to its own scale/shift.
    """

    def __init__(self, frequency_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, timesteps: Tensor) -> Tensor:
        """``timesteps``: ``[B]`` (or a scalar, broadcast to ``B = 1``) → ``[B, embed_dim]``."""
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        features = sinusoidal_timestep_embedding(timesteps, self.frequency_dim)
        # match the parameters' dtype so that a model cast to bf16/fp16 (without autocast) still runs
        return self.mlp(features.to(self.mlp[0].weight.dtype))
