"""``PDDDPMTrainer``: PD-DDPM as a refiner of the user's nnU-Net (the default recipe).

The paper's denoiser is trained from scratch on the diffused ground truth; at a CPU or a small-data budget it stays
a weaker segmenter than the network whose output it corrects, so from T' = 300 it adds its own errors
(``benchmarks/benchmark_refiner.py``: -0.014 Dice, -0.09 lesion F1 over 3 seeds). The refiner starts where that
network ends instead: its weights, its errors as training starts, and its probabilities as the sampling start.
"""
from __future__ import annotations

from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.discovery import DEFAULT_PRE_SEGMENTER_TRAINER
from nnunet_pdddpm.trainers.pdddpm_trainer import WARM_START_FROM_PRE_SEGMENTER, PDDDPMTrainer_paper


class RefinerRecipe:
    """The refiner recipe (mixin, before a :class:`PDDDPMTrainer_paper` class): the denoiser starts as the
    pre-segmenter (an nnU-Net ``PlainConvUNet`` of the same fold and width), reads its output as class logits fitted
    with nnU-Net's Dice + CE, and half of its training samples are diffused from the pre-segmenter's out-of-fold
    probabilities (2p - 1): the starts it will see at inference, where sampling diffuses the pre-segmenter's
    probabilities too. Half, not all: after the first reverse step the state is a noisy copy of the denoiser's own
    estimate, closer to the ground truth than to the start, and the samples diffused from the ground truth teach
    that part of the chain."""

    diffusion_config = DiffusionConfig(prediction_type="sample", output_activation="softmax")
    warm_start = WARM_START_FROM_PRE_SEGMENTER
    pre_segmentation_errors = 0.5
    pre_segmentation_source = "out_of_fold"
    pre_segmentation_soft = True
    soft_pre_segmentation = True
    # soft samples make the predictive entropy continuous: it ranks the error voxels better than the variance of
    # near-binary samples (benchmark_refiner.py, 3 seeds: voxel error-AUROC 0.984 against 0.949)
    uncertainty = "entropy"
    # a quarter of nnU-Net's softmax in the result: on the CPU demo's models (3 seeds, 12 cases,
    # benchmarks/refiner_sampling_study.py --demo) Dice +0.0094 [+0.0017, +0.0179] over nnU-Net against +0.0083
    # [-0.0012, +0.0183] unfused, and the entropy of the result ranks the errors as nnU-Net's softmax does
    # (error-AUROC 0.996 against 0.997; the ensemble's own entropy: 0.988)
    pre_segmentation_weight = 0.25
    # lesion detection stays nnU-Net's: the refiner's lesion-level changes were mostly spurious lesions. At nnU-Net's
    # plateau (refiner_sampling_study.py, 3 seeds x 12 cases, T' = 300, fused 0.25) lesion F1 0.976 (nnU-Net's)
    # instead of 0.969, Dice +0.0007 and error-AUROC 0.995 unchanged
    lesion_gate = True
    # the members see the case mirrored as nnU-Net's test-time augmentation does (no extra network evaluation): the
    # refiner's corrections that hold in one orientation only are averaged out. Fused + gate, 3 seeds, T' = 300
    # (refiner_sampling_study.py): Dice over nnU-Net +0.0039 [+0.0007, +0.0082] at nnU-Net's plateau (unmirrored
    # +0.0056 [-0.0026, +0.0162]) and +0.0089 [+0.0038, +0.0142] on the demo's models (unmirrored +0.0098 [+0.0016,
    # +0.0190]): a slightly lower mean, more cases improved and fewer worse (18/10 of 36 against 15/14)
    mirrored_members = True
    timestep_range = 300
    t_prime = 100
    t_prime_sweep = (25, 50, 100, 200, 300)


class PDDDPMTrainer(RefinerRecipe, PDDDPMTrainer_paper):
    """The default denoiser: the refiner of the user's ``nnUNetTrainer`` (train its five folds first: the warm start
    reads the fold's checkpoint, the training starts the other folds'). Sampling defaults as measured: DDIM with 5
    steps, an ensemble of 5, the T' of the final validation's sweep (100 before it has run)."""

    pre_segmenter_trainers = (DEFAULT_PRE_SEGMENTER_TRAINER,)
    sampler = "ddim"
    steps = 5
    ensemble_size = 5
