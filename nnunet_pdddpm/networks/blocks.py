"""Building blocks of the denoiser: time-conditioned conv blocks and spatial self-attention.

The op classes (``conv_op``, ``norm_op``, ``nonlin``) are parameters, as in dynamic_network_architectures, so the same
code builds 2D and 3D networks.

Time conditioning is one mechanism, used by every conv block of the encoder and the decoder:
``h = nonlin(norm(conv(x)) * (1 + scale) + shift)`` with ``(scale, shift) = Linear(SiLU(emb))``
(the "scale-shift norm" of guided-diffusion, placed after nnU-Net's conv → norm).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list
from torch import Tensor, nn


class TimeConditionedConvBlock(nn.Module):
    """conv → norm → ``* (1 + scale) + shift`` → nonlin, with (scale, shift) predicted from the timestep embedding.

    Shapes: ``x [B, in_channels, *spatial]``, ``emb [B, time_embed_dim]`` →
    ``[B, out_channels, *ceil(spatial / stride)]`` (same padding ``(k - 1) // 2``, as nnU-Net).
    """

    def __init__(
        self,
        conv_op: type,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        time_embed_dim: int,
        conv_bias: bool = True,
        norm_op: type | None = None,
        norm_op_kwargs: dict | None = None,
        nonlin: type | None = None,
        nonlin_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        kernel_size = maybe_convert_scalar_to_list(conv_op, kernel_size)
        stride = maybe_convert_scalar_to_list(conv_op, stride)
        self.conv = conv_op(in_channels, out_channels, kernel_size, stride,
                            padding=[(k - 1) // 2 for k in kernel_size], bias=conv_bias)
        self.norm = norm_op(out_channels, **(norm_op_kwargs or {})) if norm_op is not None else nn.Identity()
        self.scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(time_embed_dim, 2 * out_channels))
        self.nonlin = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()
        self.zero_init_()

    def zero_init_(self) -> None:
        """Start as the unconditioned nnU-Net block (scale = shift = 0); the time dependence is learnt."""
        nn.init.zeros_(self.scale_shift[-1].weight)
        nn.init.zeros_(self.scale_shift[-1].bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.norm(self.conv(x))
        scale, shift = self.scale_shift(emb).chunk(2, dim=1)
        broadcast = (*scale.shape, *([1] * (h.ndim - 2)))  # [B, C] -> [B, C, 1, ..., 1]
        h = h * (1 + scale.reshape(broadcast)) + shift.reshape(broadcast)
        return self.nonlin(h)


class TimeConditionedStack(nn.Module):
    """``n_convs`` :class:`TimeConditionedConvBlock` s; only the first one is strided (nnU-Net's StackedConvBlocks).

    ``block_kwargs`` (``conv_bias``, ``norm_op``, ``norm_op_kwargs``, ``nonlin``, ``nonlin_kwargs``) go to every block
    unchanged, so they are documented and defaulted once, on :class:`TimeConditionedConvBlock`.
    """

    def __init__(
        self,
        n_convs: int,
        conv_op: type,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        first_stride: int | Sequence[int],
        time_embed_dim: int,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TimeConditionedConvBlock(conv_op, in_channels if i == 0 else out_channels, out_channels, kernel_size,
                                     first_stride if i == 0 else 1, time_embed_dim, **block_kwargs)
            for i in range(n_convs)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, emb)
        return x


class SelfAttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection (guided-diffusion's
    AttentionBlock): ``x + proj(attention(qkv(GroupNorm(x))))``.

    Shapes: ``x [B, channels, *spatial]`` → same shape. Cost grows with ``prod(spatial) ** 2`` (memory is linear with
    the fused ``scaled_dot_product_attention`` kernels), which is why it is only used at the coarsest stages.
    """

    def __init__(self, conv_op: type, channels: int, num_heads: int = 1, max_norm_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the number of channels ({channels})")
        self.num_heads = num_heads
        # GroupNorm: statistics over all positions, independent of the batch, valid in 2D and 3D alike
        self.norm = nn.GroupNorm(math.gcd(max_norm_groups, channels), channels)
        self.qkv = conv_op(channels, 3 * channels, 1)
        self.proj = conv_op(channels, channels, 1)
        self.zero_init_()

    def zero_init_(self) -> None:
        """Start as the identity (the residual branch outputs zero), as in guided-diffusion."""
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, -1)
        # each [B, heads, N, C / heads]; CUDA's fused SDPA kernels refuse a head dimension whose stride is not 1
        # (the transposed view's is N) and fall back to the math path that materialises N x N scores
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, *spatial)
        return x + self.proj(h)
