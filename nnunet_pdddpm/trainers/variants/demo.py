"""The demo's trainers: ``_demoCPU`` (minutes on two cores, narrow networks) with its options, the refiner
benchmark's (``_refinerCPU``), the plain nnU-Nets that are the yardsticks (``nnUNetTrainer_demoCPU`` and
``_long``: the demo's segmenter budget and PD-DDPM's total budget), and ``_demoGPU`` (the paper's sampling,
a few hours of training).
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_pdddpm.trainers.attunet_trainer import PDDDPMAttUNetTrainer
from nnunet_pdddpm.trainers.pdddpm_trainer import PDDDPMTrainer_paper
from nnunet_pdddpm.trainers.refiner import RefinerRecipe
from nnunet_pdddpm.trainers.seeding import SeededTrainingMixin
from nnunet_pdddpm.trainers.variants.mixins import (
    _ContinuesPreSegmenter,
    _DecayingLR,
    _InitSettings,
    _NarrowNetwork,
    _OutOfFoldErrors,
    _PredictsX0,
    _PreSegmenterErrors,
    _SegmentationOutput,
    _SimulatedErrors,
)


# ---------------------------------------------------------------- the CPU demo
class PDDDPMTrainer_demoCPU(_InitSettings, PDDDPMTrainer_paper):
    """The CPU demo's denoiser: narrow, 300 iterations at a higher learning rate than the paper's 1e-4.

    Every patch holds lesion voxels (``oversample_foreground_percent = 1``): in a few hundred
    iterations small lesions would otherwise barely be seen. Its sampling settings (used by the
    final validation) are the demo's CPU setting: 5 DDIM steps, an ensemble of 3, and T' chosen by the
    final validation's sweep over 50-300 (``t_prime`` 100 is the fallback).
    """

    base_features = 16
    max_features = 128
    t_prime = 100
    ensemble_size = 3
    sampler = "ddim"
    steps = 5
    t_prime_sweep = (50, 100, 200, 300)
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_demoCPU", "PDDDPMAttUNetTrainer", "nnUNetTrainer")
    init_settings = {"num_epochs": 12, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 2,
                       "oversample_foreground_percent": 1.0, "initial_lr": 1e-3}


class _DemoCPUSegmenterBudget(_NarrowNetwork, _InitSettings):
    """The CPU demo's segmentation budget (mixin, before the trainer): 800 iterations of at most 6 patches, every
    patch with lesion voxels, the plan's network narrowed to 16-128 features.

    A segmenter trained this briefly on small lesions first predicts background only, and how long it stays
    there depends on the seed: with the plan's batch of 13 and 400 iterations, seed 1 never left it (Dice 0,
    the failure a new user saw), seed 0 left it after ~100 iterations. Twice the updates at half the batch
    (about the same compute) left it after ~325 iterations at seed 1 (validation Dice 0.84). The width is the demo's
    16-128 (:class:`_NarrowNetwork`).
    """

    max_batch_size = 6
    init_settings = {"num_epochs": 32, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 2,
                       "oversample_foreground_percent": 1.0}

    def _set_batch_size_and_oversample(self) -> None:
        super()._set_batch_size_and_oversample()
        self.batch_size = min(self.batch_size, self.max_batch_size)


class PDDDPMAttUNetTrainer_demoCPU(_DemoCPUSegmenterBudget, PDDDPMAttUNetTrainer):
    """The CPU demo's pre-segmenter: the paper's attention U-Net at the demo's budget."""


class PDDDPMTrainer_demoCPU_x0(_PredictsX0, PDDDPMTrainer_demoCPU):
    pass


class PDDDPMTrainer_demoCPU_aware(_PredictsX0, _SimulatedErrors, PDDDPMTrainer_demoCPU):
    timestep_range = 200


class PDDDPMTrainer_demoCPU_seg(_SegmentationOutput, PDDDPMTrainer_demoCPU):
    """x0 as class logits (softmax), fitted with nnU-Net's Dice + CE; t below the sweep's largest T'."""

    timestep_range = 300


class PDDDPMTrainer_demoCPU_segaware(_SimulatedErrors, PDDDPMTrainer_demoCPU_seg):
    """``_seg`` with half of the samples diffused from simulated pre-segmenter errors, t < 500, sweep to 500."""

    timestep_range = 500
    t_prime_sweep = (50, 100, 200, 300, 400, 500)


class PDDDPMTrainer_demoCPU_preseg(_PreSegmenterErrors, PDDDPMTrainer_demoCPU_seg):
    """``_seg``, and half of the samples diffused from the attention U-Net pre-segmenter's own prediction."""


class PDDDPMTrainer_demoCPU_oof(_OutOfFoldErrors, PDDDPMTrainer_demoCPU_preseg):
    """``_preseg`` with out-of-fold predictions: each training case segmented by the attention U-Net fold that held
    it out (needs its other folds trained)."""

    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_demoCPU",)


class nnUNetTrainer_demoCPU(_DemoCPUSegmenterBudget, SeededTrainingMixin, nnUNetTrainer):
    """Plain nnU-Net (its U-Net, loss and schedule) at the same budget: the yardstick a user already has, for the
    fidelity benchmark."""


class PDDDPMTrainer_refinerCPU(RefinerRecipe, PDDDPMTrainer_demoCPU):
    """The refiner of ``nnUNetTrainer_refinerCPU`` at the CPU budget (300 iterations of the plan's batch 13, the
    demo's width 16-128, Adam at 1e-3): the refiner benchmark's PD-DDPM."""

    pre_segmenter_trainers = ("nnUNetTrainer_refinerCPU",)
    init_settings = {**PDDDPMTrainer_demoCPU.init_settings}


class PDDDPMTrainer_demoCPU_refiner(RefinerRecipe, PDDDPMTrainer_demoCPU):
    """The CPU demo's denoiser: ``PDDDPMTrainer``'s recipe on ``nnUNetTrainer_demoCPU`` at the demo's budget (300
    iterations of 13, width 16-128), with training starts from fold 0's own predictions (``pre_segmenter``): the
    demo trains one fold, and five would triple its time. Sampled with DDIM 5 steps x 5. Its T' sweep tries three
    values instead of five: each costs about two minutes of the demo on two cores."""

    pre_segmenter_trainers = ("nnUNetTrainer_demoCPU",)
    pre_segmentation_source = "pre_segmenter"
    ensemble_size = 5
    t_prime_sweep = (25, 100, 300)
    init_settings = {**PDDDPMTrainer_demoCPU.init_settings}


class PDDDPMTrainer_demoCPU_refiner_tta(PDDDPMTrainer_demoCPU_refiner):
    """:class:`PDDDPMTrainer_demoCPU_refiner` whose training starts are fold 0's logits averaged over nnU-Net's
    test-time mirrorings, as the sampling start is predicted (the demo budget's row of ``--refiner_starts
    mirrored``)."""

    pre_segmentation_mirroring = True


class PDDDPMTrainer_refinerCPU_paper(PDDDPMTrainer_demoCPU):
    """The paper's recipe at the refiner's budget and on its pre-segmenter (``nnUNetTrainer_refinerCPU``): a
    denoiser trained from scratch on the diffused ground truth, sampled from the hard pre-segmentation. The refiner
    benchmark's head-to-head between the two recipes."""

    pre_segmenter_trainers = ("nnUNetTrainer_refinerCPU",)


class nnUNetTrainer_refinerCPU_more(_ContinuesPreSegmenter, _NarrowNetwork, _InitSettings, SeededTrainingMixin,
                                    nnUNetTrainer):
    """The same nnU-Net trained the refiner's budget more: starts from ``nnUNetTrainer_refinerCPU``'s checkpoint of
    the fold, and trains as :class:`PDDDPMTrainer_refinerCPU` does (300 iterations of 13 patches with lesions,
    Adam at 1e-3, constant), with nnU-Net's own network, loss and deep supervision. The yardstick of the refiner
    benchmark: what the refiner's training would give without diffusion."""

    pre_segmenter_trainers = ("nnUNetTrainer_refinerCPU",)
    init_settings = {**PDDDPMTrainer_demoCPU.init_settings}
    base_features = 16
    max_features = 128


class PDDDPMTrainer_refinerCPU_x3(PDDDPMTrainer_refinerCPU):
    """:class:`PDDDPMTrainer_refinerCPU` trained three times as long (900 iterations of 13, about the plateaued
    nnU-Net's 2400 x 6 patches): does the refiner gain with budget where nnU-Net does not?"""

    init_settings = {**PDDDPMTrainer_refinerCPU.init_settings, "num_epochs": 36}


class nnUNetTrainer_refinerCPU_more_x3(nnUNetTrainer_refinerCPU_more):
    """The yardstick of :class:`PDDDPMTrainer_refinerCPU_x3`: the same nnU-Net trained its budget more."""

    init_settings = {**nnUNetTrainer_refinerCPU_more.init_settings, "num_epochs": 36}


class PDDDPMTrainer_refinerCPU_poly(_DecayingLR, PDDDPMTrainer_refinerCPU):
    """:class:`PDDDPMTrainer_refinerCPU` with nnU-Net's poly schedule from 1e-3 to 0 instead of a constant 1e-3:
    three times the budget at the constant rate lost the refiner's gain; does a decaying rate keep more of it?"""


class nnUNetTrainer_refinerCPU_more_poly(_DecayingLR, nnUNetTrainer_refinerCPU_more):
    """The yardstick of :class:`PDDDPMTrainer_refinerCPU_poly`: the same nnU-Net trained its budget more, poly."""


class PDDDPMTrainer_refinerCPU_tta(PDDDPMTrainer_refinerCPU):
    """:class:`PDDDPMTrainer_refinerCPU` whose out-of-fold training starts are the other folds' logits averaged over
    nnU-Net's test-time mirrorings, as the sampling start is predicted: training starts as smooth as the ones it
    will see. Its yardstick is :class:`nnUNetTrainer_refinerCPU_more` (the same training without diffusion)."""

    pre_segmentation_mirroring = True


class nnUNetTrainer_refinerCPU(nnUNetTrainer_demoCPU):
    """Plain nnU-Net at the demo's width trained to its plateau on two cores (2400 iterations of 6, nnU-Net's poly
    schedule): the model a user would refine, and the starting point of the refiner benchmark
    (``benchmarks/benchmark_refiner.py``). Half of that (48 epochs) was not enough: two of three seeds' validation
    Dice still rose by about 0.02 per 10 epochs at its end, and the same network trained the refiner's budget more
    gained +0.008 Dice on the test cases."""

    init_settings = {**nnUNetTrainer_demoCPU.init_settings, "num_epochs": 96}


class nnUNetTrainer_demoCPU_long(nnUNetTrainer_demoCPU):
    """Plain nnU-Net with the training samples of the CPU demo's pre-segmenter and denoiser together (800 x 6 + 300 x
    13 patches = 1450 iterations of 6): PD-DDPM's yardstick at the same training budget."""

    init_settings = {**nnUNetTrainer_demoCPU.init_settings, "num_epochs": 58}


# ---------------------------------------------------------------- the GPU demo
class PDDDPMTrainer_demoGPU(_InitSettings, PDDDPMTrainer_paper):
    """The GPU demo's denoiser: the paper's sampling (T'=300, ensemble 5, DDPM), 100 epochs of 250 iterations."""

    base_features = 64
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_demoGPU", "PDDDPMAttUNetTrainer", "nnUNetTrainer")
    init_settings = {"num_epochs": 100}


class PDDDPMAttUNetTrainer_demoGPU(_InitSettings, PDDDPMAttUNetTrainer):
    """The GPU demo's pre-segmenter: the plans' attention U-Net, 100 epochs of 250 iterations."""

    init_settings = {"num_epochs": 100}
