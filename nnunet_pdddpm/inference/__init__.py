"""PD-DDPM inference: pre-segmentation, ensemble sampling over nnU-Net's sliding window, export.

Importing this package loads no training code (``nnunet_pdddpm.trainers``); a trainer is resolved by
name only when a model folder is loaded, as nnU-Net's own predictor does.
"""
from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings

__all__ = ["PerformanceSettings", "SamplingSettings"]
