"""The PD-DDPM denoiser: nnU-Net's plain conv U-Net with every conv block conditioned on the diffusion timestep.

Topology as dynamic_network_architectures' ``PlainConvUNet`` (= ``PlainConvEncoder`` + ``UNetDecoder``): per-stage
kernel sizes and strides from the plans, strided-conv downsampling, transposed-conv upsampling and skip concatenation.
Added for diffusion: a shared timestep embedding that scales/shifts every conv block (:mod:`.blocks`), and
self-attention at the ``attention_stages`` coarsest resolutions (1: the bottleneck; the paper's one head at
resolution 16 is ``attention_max_size=16`` in :func:`.from_plans.denoiser_kwargs_from_plans`).

Input: the image channels concatenated with the noisy mask ``x_t`` (one channel per class); output: the prediction for
the mask (noise, x0 or v, depending on the trainer), shape of ``x_t``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp, maybe_convert_scalar_to_list
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import Tensor, nn

from nnunet_pdddpm.networks.blocks import SelfAttentionBlock, TimeConditionedConvBlock, TimeConditionedStack
from nnunet_pdddpm.networks.time_embedding import TimestepEmbedding


def _attention_or_identity(use: bool, conv_op: type, channels: int, num_heads: int) -> nn.Module:
    return SelfAttentionBlock(conv_op, channels, num_heads) if use else nn.Identity()


class TimeConditionedEncoder(nn.Module):
    """Encoder stages ``s = 0 .. n_stages - 1``: a :class:`TimeConditionedStack` (first conv strided by
    ``strides[s]``), followed by self-attention when ``s >= n_stages - attention_stages``.

    ``forward(x [B, C_in, *spatial], emb [B, E])`` returns the list of every stage's output (the skips), highest
    resolution first; the last one is the bottleneck.
    """

    def __init__(self, input_channels: int, features_per_stage: Sequence[int], conv_op: type, kernel_sizes: Sequence,
                 strides: Sequence, n_conv_per_stage: Sequence[int], time_embed_dim: int, attention_stages: int,
                 num_heads: int, **block_kwargs) -> None:
        super().__init__()
        n_stages = len(features_per_stage)
        self.stages = nn.ModuleList()
        self.attentions = nn.ModuleList()
        for s in range(n_stages):
            self.stages.append(TimeConditionedStack(n_conv_per_stage[s], conv_op, input_channels,
                                                    features_per_stage[s], kernel_sizes[s], strides[s],
                                                    time_embed_dim, **block_kwargs))
            self.attentions.append(_attention_or_identity(s >= n_stages - attention_stages, conv_op,
                                                          features_per_stage[s], num_heads))
            input_channels = features_per_stage[s]

    def forward(self, x: Tensor, emb: Tensor) -> list[Tensor]:
        skips = []
        for stage, attention in zip(self.stages, self.attentions):
            x = attention(stage(x, emb))
            skips.append(x)
        return skips


class TimeConditionedDecoder(nn.Module):
    """Decoder stages in order of computation (coarsest first), as ``UNetDecoder``: transposed conv of the stage below
    (kernel = stride = the encoder stride), concatenation with the skip, a :class:`TimeConditionedStack`, and
    self-attention when the stage's resolution is among the ``attention_stages`` coarsest.

    ``forward(skips, emb)`` → ``[B, features_per_stage[0], *spatial]`` (full-resolution features).
    """

    def __init__(self, features_per_stage: Sequence[int], conv_op: type, kernel_sizes: Sequence, strides: Sequence,
                 n_conv_per_stage: Sequence[int], time_embed_dim: int, attention_stages: int, num_heads: int,
                 conv_bias: bool = True, **block_kwargs) -> None:
        super().__init__()
        n_stages = len(features_per_stage)
        transpconv_op = get_matching_convtransp(conv_op)
        self.transpconvs = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.attentions = nn.ModuleList()
        for s in range(1, n_stages):
            below, skip = features_per_stage[-s], features_per_stage[-(s + 1)]
            self.transpconvs.append(transpconv_op(below, skip, strides[-s], strides[-s], bias=conv_bias))
            self.stages.append(TimeConditionedStack(n_conv_per_stage[s - 1], conv_op, 2 * skip, skip,
                                                    kernel_sizes[-(s + 1)], 1, time_embed_dim, conv_bias=conv_bias,
                                                    **block_kwargs))
            resolution_index = n_stages - 1 - s  # the encoder stage whose resolution this decoder stage has
            self.attentions.append(_attention_or_identity(resolution_index >= n_stages - attention_stages, conv_op,
                                                          skip, num_heads))

    def forward(self, skips: list[Tensor], emb: Tensor) -> Tensor:
        x = skips[-1]
        for s, (transpconv, stage, attention) in enumerate(zip(self.transpconvs, self.stages, self.attentions)):
            x = attention(stage(torch.cat((transpconv(x), skips[-(s + 2)]), dim=1), emb))
        return x


class TimeConditionedUNet(nn.Module):
    """Conditional DDPM denoiser ``eps_theta([image, x_t], t)`` with nnU-Net's topology.

    Args:
        input_channels: image channels + ``num_classes`` (the noisy mask is concatenated to the image).
        num_classes: channels of the noisy mask and of the output.
        n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder,
        norm_op, norm_op_kwargs, nonlin, nonlin_kwargs, conv_bias: as ``PlainConvUNet`` / the nnU-Net plans.
        attention_stages: self-attention at this many coarsest resolutions (encoder stage and the decoder stage of
            the same resolution; the bottleneck has one); 0 disables attention.
        num_heads: attention heads (must divide the channels of those stages).
        time_embed_dim: width of the timestep embedding MLP; default ``4 * features_per_stage[0]``.

    ``forward(x [B, input_channels, *patch], t [B]) -> [B, num_classes, *patch]`` in ``x.dtype``; ``t`` holds integer
    or float timesteps in ``[0, T)``. ``patch`` must be divisible by the product of the strides (nnU-Net plans
    guarantee it).
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        n_stages: int,
        features_per_stage: Sequence[int],
        conv_op: type,
        kernel_sizes: Sequence,
        strides: Sequence,
        n_conv_per_stage: Sequence[int],
        n_conv_per_stage_decoder: Sequence[int],
        norm_op: type | None = None,
        norm_op_kwargs: dict | None = None,
        nonlin: type | None = None,
        nonlin_kwargs: dict | None = None,
        conv_bias: bool = True,
        attention_stages: int = 1,
        num_heads: int = 1,
        time_embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        for name, value, n in (("features_per_stage", features_per_stage, n_stages),
                               ("kernel_sizes", kernel_sizes, n_stages), ("strides", strides, n_stages),
                               ("n_conv_per_stage", n_conv_per_stage, n_stages),
                               ("n_conv_per_stage_decoder", n_conv_per_stage_decoder, n_stages - 1)):
            if len(value) != n:
                raise ValueError(f"{name} must have {n} entries for n_stages={n_stages}, got {list(value)}")
        if not 0 <= attention_stages <= n_stages:
            raise ValueError(f"attention_stages must be in [0, {n_stages}], got {attention_stages}")
        kernel_sizes = [maybe_convert_scalar_to_list(conv_op, k) for k in kernel_sizes]
        strides = [maybe_convert_scalar_to_list(conv_op, s) for s in strides]
        time_embed_dim = time_embed_dim or 4 * features_per_stage[0]
        block_kwargs = dict(norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs)

        self.num_classes = num_classes
        self.time_embedding = TimestepEmbedding(features_per_stage[0], time_embed_dim)
        self.encoder = TimeConditionedEncoder(input_channels, features_per_stage, conv_op, kernel_sizes, strides,
                                              n_conv_per_stage, time_embed_dim, attention_stages, num_heads,
                                              conv_bias=conv_bias, **block_kwargs)
        self.decoder = TimeConditionedDecoder(features_per_stage, conv_op, kernel_sizes, strides,
                                              n_conv_per_stage_decoder, time_embed_dim, attention_stages, num_heads,
                                              conv_bias=conv_bias, **block_kwargs)
        self.output_conv = conv_op(features_per_stage[0], num_classes, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """He init for all convs (as nnU-Net), then zero the layers whose output is added to or modulates a signal
        (scale/shift projections, attention output, final conv), so that training starts from a well-behaved net."""
        self.apply(InitWeights_He(1e-2))
        for module in self.modules():
            if isinstance(module, (TimeConditionedConvBlock, SelfAttentionBlock)):
                module.zero_init_()
        nn.init.zeros_(self.output_conv.weight)
        nn.init.zeros_(self.output_conv.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embedding(t.to(x.device))
        features = self.decoder(self.encoder(x, emb), emb)
        # the diffusion loss and the samplers work in the input's precision, also under autocast
        return self.output_conv(features).to(x.dtype)
