"""PD-DDPM inference: pre-segmentation, ensemble sampling over nnU-Net's sliding window, export."""
from nnunet_pdddpm.inference.settings import SamplingSettings

__all__ = ["SamplingSettings"]
