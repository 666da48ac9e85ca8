"""Attention U-Net (Oktay et al. 2018), the pre-segmentation network of PD-DDPM, in nnU-Net's topology.

``PlainConvUNet`` with one change: before a skip is concatenated in the decoder it is multiplied by an additive
attention gate ``psi = sigmoid(conv1x1(relu(W_x skip + W_g g)))``, where the gating signal ``g`` is the upsampled
(transposed-conv) feature of the coarser decoder stage, so skip and gate share the skip's resolution. Constructor,
deep supervision and ``decoder.deep_supervision`` behave as in ``PlainConvUNet`` / ``UNetDecoder``, so nnU-Net's
trainer, loss and predictor use it unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim, get_matching_convtransp
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import Tensor, nn


class AttentionGate(nn.Module):
    """Additive attention gate: ``skip [B, C, *s]``, ``gate [B, C_g, *s]`` → ``skip * psi`` with ``psi [B, 1, *s]``
    in ``(0, 1)``, one coefficient per voxel shared by all channels (Oktay et al., Eq. 1–2)."""

    def __init__(self, conv_op: type, skip_channels: int, gating_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.skip_proj = conv_op(skip_channels, inter_channels, 1, bias=False)  # W_x
        self.gate_proj = conv_op(gating_channels, inter_channels, 1, bias=True)  # W_g (+ b_g)
        self.psi = conv_op(inter_channels, 1, 1, bias=True)

    def coefficients(self, skip: Tensor, gate: Tensor) -> Tensor:
        """``psi [B, 1, *s]``: the attention coefficients."""
        return torch.sigmoid(self.psi(torch.relu(self.skip_proj(skip) + self.gate_proj(gate))))

    def forward(self, skip: Tensor, gate: Tensor) -> Tensor:
        return skip * self.coefficients(skip, gate)


class AttentionGateDecoder(nn.Module):
    """``UNetDecoder`` with an :class:`AttentionGate` on every skip. Stages are in order of computation (coarsest
    first). ``forward(skips)`` returns the full-resolution logits, or with ``deep_supervision`` a list of logits per
    decoder stage, highest resolution first."""

    def __init__(self, encoder: PlainConvEncoder, num_classes: int, n_conv_per_stage: int | Sequence[int],
                 deep_supervision: bool, nonlin_first: bool = False) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encoder = encoder
        self.num_classes = num_classes
        n_stages_encoder = len(encoder.output_channels)
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * (n_stages_encoder - 1)
        transpconv_op = get_matching_convtransp(conv_op=encoder.conv_op)
        self.transpconvs, self.gates, self.stages, self.seg_layers = (nn.ModuleList() for _ in range(4))
        for s in range(1, n_stages_encoder):
            below, skip = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            stride = encoder.strides[-s]
            self.transpconvs.append(transpconv_op(below, skip, stride, stride, bias=encoder.conv_bias))
            self.gates.append(AttentionGate(encoder.conv_op, skip, skip, max(skip // 2, 1)))
            self.stages.append(StackedConvBlocks(
                n_conv_per_stage[s - 1], encoder.conv_op, 2 * skip, skip, encoder.kernel_sizes[-(s + 1)], 1,
                encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs, nonlin_first))
            # built for every stage (as UNetDecoder) so weights load with deep supervision on or off
            self.seg_layers.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))

    def forward(self, skips: list[Tensor]) -> Tensor | list[Tensor]:
        x = skips[-1]
        seg_outputs = []
        for s in range(len(self.stages)):
            up = self.transpconvs[s](x)
            gated_skip = self.gates[s](skips[-(s + 2)], up)
            x = self.stages[s](torch.cat((up, gated_skip), dim=1))
            if self.deep_supervision or s == len(self.stages) - 1:
                seg_outputs.append(self.seg_layers[s](x))
        seg_outputs = seg_outputs[::-1]
        return seg_outputs if self.deep_supervision else seg_outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Number of feature-map elements of the decoder for an encoder input of ``input_size`` (no B, C)."""
        skip_sizes = []
        for s in range(len(self.encoder.strides) - 1):
            input_size = [i // j for i, j in zip(input_size, self.encoder.strides[s])]
            skip_sizes.append(input_size)
        output = np.int64(0)
        for s in range(len(self.stages)):
            size = skip_sizes[-(s + 1)]
            channels = self.encoder.output_channels[-(s + 2)]
            output += self.stages[s].compute_conv_feature_map_size(size)
            output += np.prod([channels, *size], dtype=np.int64)  # transposed conv
            # gate: W_x / W_g projections, psi, gated skip
            output += np.prod([2 * self.gates[s].psi.in_channels + 1 + channels, *size], dtype=np.int64)
            if self.deep_supervision or s == len(self.stages) - 1:
                output += np.prod([self.num_classes, *size], dtype=np.int64)
        return output


class AttentionGateUNet(AbstractDynamicNetworkArchitectures):
    """Attention U-Net with the constructor of ``PlainConvUNet`` (so nnU-Net plans build it directly).

    ``forward(x [B, input_channels, *patch])`` → logits ``[B, num_classes, *patch]``, or with deep supervision a list
    ``[logits at patch, at patch / strides[1], ...]`` (highest resolution first, ``n_stages - 1`` entries).
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: type,
        kernel_sizes: int | Sequence,
        strides: int | Sequence,
        n_conv_per_stage: int | Sequence[int],
        num_classes: int,
        n_conv_per_stage_decoder: int | Sequence[int],
        conv_bias: bool = False,
        norm_op: type | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        nonlin_first: bool = False,
    ) -> None:
        super().__init__()
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = ("encoder.stages.0.0.convs.0.all_modules.0", "encoder.stages.0.0.convs.0.conv")
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        if len(n_conv_per_stage_decoder) != n_stages - 1:
            raise ValueError(f"n_conv_per_stage_decoder needs {n_stages - 1} entries, got {n_conv_per_stage_decoder}")
        self.encoder = PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                        n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                                        dropout_op_kwargs, nonlin, nonlin_kwargs, return_skips=True,
                                        nonlin_first=nonlin_first)
        self.decoder = AttentionGateDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                            nonlin_first=nonlin_first)
        self.apply(self.initialize)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """As ``PlainConvUNet``: feature-map elements for a patch ``input_size`` (spatial only), for VRAM estimates."""
        if len(input_size) != convert_conv_op_to_dim(self.encoder.conv_op):
            raise ValueError("give the spatial patch size only, without batch and channel axes")
        return (self.encoder.compute_conv_feature_map_size(input_size)
                + self.decoder.compute_conv_feature_map_size(input_size))

    @staticmethod
    def initialize(module: nn.Module) -> None:
        InitWeights_He(1e-2)(module)
