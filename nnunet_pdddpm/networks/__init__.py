"""PD-DDPM networks: the time-conditioned denoiser and the attention U-Net pre-segmenter, built from nnU-Net plans."""
from nnunet_pdddpm.networks.attention_unet import AttentionGate, AttentionGateUNet
from nnunet_pdddpm.networks.denoiser import TimeConditionedUNet
from nnunet_pdddpm.networks.from_plans import (
    build_attention_unet,
    build_denoiser,
    build_denoiser_from_kwargs,
    denoiser_kwargs_from_plans,
)

__all__ = [
    "AttentionGate",
    "AttentionGateUNet",
    "TimeConditionedUNet",
    "build_attention_unet",
    "build_denoiser",
    "build_denoiser_from_kwargs",
    "denoiser_kwargs_from_plans",
]
