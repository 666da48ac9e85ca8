"""``PDDDPMAttUNetTrainer``: the paper's pre-segmenter, a U-Net with attention gates (Oktay et al.).

Built from the same plans as nnU-Net's default U-Net and trained exactly like ``nnUNetTrainer``
(loss, deep supervision, schedule); only the architecture differs, training is seeded when
``nnunet_pdddpm_seed`` is set (``seeding.py``), and checkpoints are plain data that load with
``torch.load(weights_only=True)`` (``safe_checkpoints.py``).
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_pdddpm.networks.from_plans import build_attention_unet
from nnunet_pdddpm.trainers.safe_checkpoints import SafeCheckpointMixin
from nnunet_pdddpm.trainers.seeding import SeededTrainingMixin


class PDDDPMAttUNetTrainer(SeededTrainingMixin, SafeCheckpointMixin, nnUNetTrainer):
    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_attention_unet(configuration_manager, num_input_channels, num_output_channels,
                                    enable_deep_supervision)
