"""Short runs, in nnU-Net's variant style: each class changes a few attributes and nothing else.

``_tiny`` variants are for tests and quick checks on a CPU (a few iterations, a narrow denoiser,
short validation sampling); ``_demoCPU`` variants train the CPU profile of ``nnunet_pdddpm_demo``
(minutes on two cores, narrow networks); ``_demoGPU`` variants its GPU profile (the paper's
sampling settings, a few hours of training); ``_w128`` is the paper's denoiser width; ``_4draws``
trains each augmented image at four noise draws.
"""
from __future__ import annotations

import copy

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_pdddpm.trainers.attunet_trainer import PDDDPMAttUNetTrainer
from nnunet_pdddpm.trainers.pdddpm_trainer import PDDDPMTrainer


class PDDDPMTrainer_tiny(PDDDPMTrainer):
    base_features = 8
    max_features = 32
    t_prime = 20
    ensemble_size = 2
    sampler = "ddim"
    sampling_steps = 4
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_tiny", "PDDDPMAttUNetTrainer", "nnUNetTrainer")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2
        self.initial_lr = 1e-3


class PDDDPMAttUNetTrainer_tiny(PDDDPMAttUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2


class PDDDPMTrainer_w128(PDDDPMTrainer):
    base_features = 128


class PDDDPMTrainer_4draws(PDDDPMTrainer):
    """Each augmented image at 4 (t, noise) draws: a quarter of the augmentation work per step.

    For GPUs that nnU-Net's CPU augmentation cannot keep busy (``benchmark_training``'s busy %).
    """

    noise_draws_per_image = 4


class PDDDPMTrainer_demoCPU(PDDDPMTrainer):
    """The CPU demo's denoiser: narrow, 300 iterations at a higher learning rate than the paper's 1e-4.

    Every patch holds lesion voxels (``oversample_foreground_percent = 1``): in a few hundred
    iterations small lesions would otherwise barely be seen. Its sampling settings (used by the
    final validation) are the demo's CPU setting: T'=100 reached in 5 DDIM steps, an ensemble of 3.
    """

    base_features = 16
    max_features = 128
    t_prime = 100
    ensemble_size = 3
    sampler = "ddim"
    sampling_steps = 5
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_demoCPU", "PDDDPMAttUNetTrainer", "nnUNetTrainer")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 12
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 2
        self.oversample_foreground_percent = 1.0
        self.initial_lr = 1e-3


class PDDDPMAttUNetTrainer_demoCPU(PDDDPMAttUNetTrainer):
    """The CPU demo's pre-segmenter: the plans' attention U-Net, narrower (16 to 128 features), 400 iterations.

    Every patch holds lesion voxels (``oversample_foreground_percent = 1``): with nnU-Net's third,
    the network still predicts background only after this few iterations (with it, it starts to
    find lesions after 100 to 200 iterations). The width is a class attribute applied in
    ``build_network_architecture``, which nnU-Net also calls at inference, so training and
    prediction build the same network.
    """

    base_features = 16
    max_features = 128

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 16
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 2
        self.oversample_foreground_percent = 1.0

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        narrow = _with_features(configuration_manager, cls.base_features, cls.max_features)
        return PDDDPMAttUNetTrainer.build_network_architecture(plans_manager, narrow, num_input_channels,
                                                               num_output_channels, enable_deep_supervision)


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
