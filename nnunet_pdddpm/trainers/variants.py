"""Short runs, in nnU-Net's variant style: each class changes a few attributes and nothing else.

``_tiny`` variants are for tests and quick checks on a CPU (a few iterations, a narrow denoiser,
short validation sampling); ``_demoCPU`` variants train the CPU profile of ``nnunet_pdddpm_demo``
(minutes on two cores, narrow networks); ``_demoGPU`` variants its GPU profile (the paper's
sampling settings, a few hours of training); ``_w128`` is the paper's denoiser width; ``_4draws``
trains each augmented image at four noise draws. The training options for the PD-DDPM regime, each
alone: ``_x0`` and ``_v`` (the network predicts the clean mask or the velocity instead of the paper's
noise), ``_tmax`` (timesteps drawn below 500 instead of 1000: inference from T'=300 never goes higher),
and ``_aware``, all three for PD-DDPM: x0 target, t < 500, and half of the samples diffused from a mask
with simulated pre-segmenter errors (``pre_segmentation_errors.py``). ``_seg`` reads the output as class logits
fitted with nnU-Net's Dice + CE; ``_preseg`` and ``_oof`` add the pre-segmenter's own predictions of the training
patches (its fold, or the fold that held each case out; ``training_pre_segmenter.py``). ``nnUNetTrainer_demoCPU``
and ``_long`` are plain nnU-Net at the demo's segmenter budget and at PD-DDPM's total budget: the yardsticks.
"""
from __future__ import annotations

import copy

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.trainers.attunet_trainer import PDDDPMAttUNetTrainer
from nnunet_pdddpm.trainers.pdddpm_trainer import PDDDPMTrainer
from nnunet_pdddpm.trainers.seeding import SeededTrainingMixin


class PDDDPMTrainer_tiny(PDDDPMTrainer):
    base_features = 8
    max_features = 32
    t_prime = 20
    ensemble_size = 2
    sampler = "ddim"
    sampling_steps = 4
    t_prime_sweep = (5, 10, 20)
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_tiny", "PDDDPMAttUNetTrainer", "nnUNetTrainer")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2
        self.initial_lr = 1e-3


class PDDDPMTrainer_tiny_aware(PDDDPMTrainer_tiny):
    diffusion_config = DiffusionConfig(prediction_type="sample")
    timestep_range = 40
    pre_segmentation_errors = 0.5


class PDDDPMTrainer_tiny_preseg(PDDDPMTrainer_tiny):
    diffusion_config = DiffusionConfig(prediction_type="sample", output_activation="softmax")
    timestep_range = 40
    pre_segmentation_errors = 0.5
    pre_segmentation_source = "pre_segmenter"


class PDDDPMAttUNetTrainer_tiny(PDDDPMAttUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2


class PDDDPMTrainer_w128(PDDDPMTrainer):
    base_features = 128


class PDDDPMTrainer_attn16(PDDDPMTrainer):
    """Self-attention at every stage of at most 16 voxels per axis (the paper's one head at 16x16)."""

    attention_max_size = 16


class PDDDPMTrainer_4draws(PDDDPMTrainer):
    """Each augmented image at 4 (t, noise) draws: a quarter of the augmentation work per step.

    For GPUs that nnU-Net's CPU augmentation cannot keep busy (``benchmark_training``'s busy %).
    """

    noise_draws_per_image = 4


class PDDDPMTrainer_x0(PDDDPMTrainer):
    diffusion_config = DiffusionConfig(prediction_type="sample")


class PDDDPMTrainer_v(PDDDPMTrainer):
    diffusion_config = DiffusionConfig(prediction_type="v_prediction")


class PDDDPMTrainer_tmax(PDDDPMTrainer):
    timestep_range = 500


class PDDDPMTrainer_aware(PDDDPMTrainer):
    diffusion_config = DiffusionConfig(prediction_type="sample")
    timestep_range = 500
    pre_segmentation_errors = 0.5


class PDDDPMTrainer_seg(PDDDPMTrainer):
    """The clean mask as class logits (softmax), fitted with nnU-Net's Dice + CE loss."""

    diffusion_config = DiffusionConfig(prediction_type="sample", output_activation="softmax")


class PDDDPMTrainer_preseg(PDDDPMTrainer_seg):
    """``_seg``, t < 500, half of the samples diffused from the pre-segmenter's own prediction of the patch."""

    timestep_range = 500
    pre_segmentation_errors = 0.5
    pre_segmentation_source = "pre_segmenter"


class PDDDPMTrainer_oof(PDDDPMTrainer_preseg):
    """``_preseg`` with out-of-fold predictions (needs every fold of the pre-segmenter)."""

    pre_segmentation_source = "out_of_fold"


class PDDDPMTrainer_demoCPU(PDDDPMTrainer):
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
    sampling_steps = 5
    t_prime_sweep = (50, 100, 200, 300)
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_demoCPU", "PDDDPMAttUNetTrainer", "nnUNetTrainer")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 12
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 2
        self.oversample_foreground_percent = 1.0
        self.initial_lr = 1e-3


class _DemoCPUSegmenterBudget:
    """The CPU demo's segmentation budget (mixin, before the trainer): 800 iterations of at most 6 patches, every
    patch with lesion voxels, the plan's network narrowed to 16-128 features.

    A segmenter trained this briefly on small lesions first predicts background only, and how long it stays
    there depends on the seed: with the plan's batch of 13 and 400 iterations, seed 1 never left it (Dice 0,
    the failure a new user saw), seed 0 left it after ~100 iterations. Twice the updates at half the batch
    (about the same compute) left it after ~325 iterations at seed 1 (validation Dice 0.84). The width is
    applied in ``build_network_architecture``, which nnU-Net also calls at inference, so training and
    prediction build the same network.
    """

    base_features = 16
    max_features = 128
    max_batch_size = 6

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 32
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 2
        self.oversample_foreground_percent = 1.0

    def _set_batch_size_and_oversample(self) -> None:
        super()._set_batch_size_and_oversample()
        self.batch_size = min(self.batch_size, self.max_batch_size)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        narrow = _with_features(configuration_manager, cls.base_features, cls.max_features)
        return super().build_network_architecture(plans_manager, narrow, num_input_channels, num_output_channels,
                                                  enable_deep_supervision)


class PDDDPMAttUNetTrainer_demoCPU(_DemoCPUSegmenterBudget, PDDDPMAttUNetTrainer):
    """The CPU demo's pre-segmenter: the paper's attention U-Net at the demo's budget."""


class PDDDPMTrainer_demoCPU_x0(PDDDPMTrainer_demoCPU):
    diffusion_config = DiffusionConfig(prediction_type="sample")


class PDDDPMTrainer_demoCPU_v(PDDDPMTrainer_demoCPU):
    diffusion_config = DiffusionConfig(prediction_type="v_prediction")


class PDDDPMTrainer_demoCPU_tmax(PDDDPMTrainer_demoCPU):
    timestep_range = 200  # twice the CPU demo's T' = 100


class PDDDPMTrainer_demoCPU_aware(PDDDPMTrainer_demoCPU):
    diffusion_config = DiffusionConfig(prediction_type="sample")
    timestep_range = 200
    pre_segmentation_errors = 0.5


class PDDDPMTrainer_demoCPU_seg(PDDDPMTrainer_demoCPU):
    """x0 as class logits (softmax), fitted with nnU-Net's Dice + CE; t below the sweep's largest T'."""

    diffusion_config = DiffusionConfig(prediction_type="sample", output_activation="softmax")
    timestep_range = 300


class PDDDPMTrainer_demoCPU_segaware(PDDDPMTrainer_demoCPU_seg):
    """``_seg`` with half of the samples diffused from simulated pre-segmenter errors, t < 500, sweep to 500."""

    timestep_range = 500
    t_prime_sweep = (50, 100, 200, 300, 400, 500)
    pre_segmentation_errors = 0.5


class PDDDPMTrainer_demoCPU_preseg(PDDDPMTrainer_demoCPU_seg):
    """``_seg``, and half of the samples diffused from the attention U-Net pre-segmenter's own prediction."""

    pre_segmentation_errors = 0.5
    pre_segmentation_source = "pre_segmenter"


class PDDDPMTrainer_demoCPU_oof(PDDDPMTrainer_demoCPU_preseg):
    """``_preseg`` with out-of-fold predictions: each training case segmented by the attention U-Net fold that held
    it out (needs its other folds trained)."""

    pre_segmentation_source = "out_of_fold"
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_demoCPU",)


class PDDDPMTrainer_demoCPU_presegNN(PDDDPMTrainer_demoCPU_preseg):
    """``_preseg`` for the plain nnU-Net pre-segmenter of the demo budget."""

    pre_segmenter_trainers = ("nnUNetTrainer_demoCPU",)


class nnUNetTrainer_demoCPU(_DemoCPUSegmenterBudget, SeededTrainingMixin, nnUNetTrainer):
    """Plain nnU-Net (its U-Net, loss and schedule) at the same budget: the yardstick a user already has, for the
    fidelity benchmark."""


class nnUNetTrainer_demoCPU_long(nnUNetTrainer_demoCPU):
    """Plain nnU-Net with the training samples of the CPU demo's pre-segmenter and denoiser together (800 x 6 + 300 x
    13 patches = 1450 iterations of 6): PD-DDPM's yardstick at the same training budget."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 58


class PDDDPMTrainer_demoGPU(PDDDPMTrainer):
    """The GPU demo's denoiser: the paper's sampling (T'=300, ensemble 5, DDPM), 100 epochs of 250 iterations."""

    base_features = 64
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_demoGPU", "PDDDPMAttUNetTrainer", "nnUNetTrainer")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 100


class PDDDPMAttUNetTrainer_demoGPU(PDDDPMAttUNetTrainer):
    """The GPU demo's pre-segmenter: the plans' attention U-Net, 100 epochs of 250 iterations."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 100


def _with_features(configuration_manager: ConfigurationManager, base: int, cap: int) -> ConfigurationManager:
    """A copy of ``configuration_manager`` whose stage ``i`` has ``min(base * 2**i, cap)`` features."""
    configuration = copy.deepcopy(configuration_manager.configuration)
    arch = configuration["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [min(base * 2 ** i, cap) for i in range(arch["n_stages"])]
    return ConfigurationManager(configuration)
