"""The paper's regime and its training options, each alone: ``_w128`` (the paper's denoiser width), ``_attn16``,
``_4draws`` (each augmented image at four noise draws), ``_x0`` and ``_v`` (the network predicts the clean mask or
the velocity instead of the noise), ``_tmax`` (timesteps below 500), ``_aware`` (x0 target, t < 500, simulated
pre-segmenter errors), ``_seg`` (class logits with nnU-Net's Dice + CE), ``_preseg`` and ``_oof`` (the
pre-segmenter's own predictions of the training patches: its fold, or the fold that held each case out).
"""
from __future__ import annotations

from nnunet_pdddpm.trainers.pdddpm_trainer import PDDDPMTrainer_paper
from nnunet_pdddpm.trainers.refiner import PDDDPMTrainer
from nnunet_pdddpm.trainers.variants.mixins import (
    _OutOfFoldErrors,
    _PredictsV,
    _PredictsX0,
    _PreSegmenterErrors,
    _SegmentationOutput,
    _SimulatedErrors,
)


class PDDDPMTrainer_w128(PDDDPMTrainer_paper):
    base_features = 128


class PDDDPMTrainer_attn16(PDDDPMTrainer_paper):
    """Self-attention at every stage of at most 16 voxels per axis (the paper's one head at 16x16)."""

    attention_max_size = 16


class PDDDPMTrainer_4draws(PDDDPMTrainer_paper):
    """Each augmented image at 4 (t, noise) draws: a quarter of the augmentation work per step.

    For GPUs that nnU-Net's CPU augmentation cannot keep busy (``benchmark_training``'s busy %).
    """

    noise_draws_per_image = 4


class PDDDPMTrainer_x0(_PredictsX0, PDDDPMTrainer_paper):
    pass


class PDDDPMTrainer_v(_PredictsV, PDDDPMTrainer_paper):
    pass


class PDDDPMTrainer_tmax(PDDDPMTrainer_paper):
    timestep_range = 500


class PDDDPMTrainer_aware(_PredictsX0, _SimulatedErrors, PDDDPMTrainer_paper):
    timestep_range = 500


class PDDDPMTrainer_seg(_SegmentationOutput, PDDDPMTrainer_paper):
    """The clean mask as class logits (softmax), fitted with nnU-Net's Dice + CE loss."""


class PDDDPMTrainer_preseg(_PreSegmenterErrors, PDDDPMTrainer_seg):
    """``_seg``, t < 500, half of the samples diffused from the pre-segmenter's own prediction of the patch."""

    timestep_range = 500


class PDDDPMTrainer_oof(_OutOfFoldErrors, PDDDPMTrainer_preseg):
    """``_preseg`` with out-of-fold predictions (needs every fold of the pre-segmenter)."""


class PDDDPMTrainer_refiner(PDDDPMTrainer):
    """``PDDDPMTrainer`` under the alias ``PDDDPMTrainer_refiner`` (folders trained under that name keep
    resolving)."""
