"""Short runs, in nnU-Net's variant style: each class changes a few attributes and nothing else.

``_tiny`` variants are for tests and quick checks on a CPU (a few iterations, a narrow denoiser,
short validation sampling); ``_demoCPU`` variants train the CPU demo profile; ``_w128`` is the
paper's denoiser width.
"""
from __future__ import annotations

import torch

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
