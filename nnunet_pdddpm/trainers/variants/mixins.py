"""The options a variant combines, one mixin each (put before the trainer in the bases).

The same option exists for several regimes (the paper's, ``_tiny``, ``_demoCPU``), so each is one mixin here
and a variant names its regime and its options as bases. The run length, learning rate and foreground
oversampling are instance attributes that ``nnUNetTrainer.__init__`` sets; a variant states them in
``init_settings`` (:class:`_InitSettings`) instead of repeating an ``__init__``.
"""
from __future__ import annotations

from os.path import join
from typing import Any, Mapping

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.networks.from_plans import with_features
from nnunet_pdddpm.trainers.update_guard import make_adam


class _InitSettings:
    """Sets ``init_settings`` after the trainer's ``__init__``: nnU-Net keeps the run length, learning rate and
    foreground oversampling in instance attributes that its ``__init__`` sets, not in class attributes."""

    init_settings: Mapping[str, Any] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # the parameter names are nnU-Net's: it records them (inspect.signature of __init__) as the checkpoint's
        # init_args
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name, value in self.init_settings.items():
            if not hasattr(self, name):  # every name is one nnU-Net's __init__ sets: anything else is a typo
                raise AttributeError(f"{type(self).__name__}.init_settings names {name!r}, which the trainer "
                                     f"does not have")
            setattr(self, name, value)


class _PredictsX0:
    """The network predicts the clean mask instead of the paper's noise."""

    diffusion_config = DiffusionConfig(prediction_type="sample")


class _PredictsV:
    """The network predicts the velocity instead of the paper's noise."""

    diffusion_config = DiffusionConfig(prediction_type="v_prediction")


class _SegmentationOutput:
    """The clean mask as class logits (softmax), fitted with nnU-Net's Dice + CE loss."""

    diffusion_config = DiffusionConfig(prediction_type="sample", output_activation="softmax")


class _SimulatedErrors:
    """Half of the samples diffused from a mask with simulated pre-segmenter errors (needs a clean-mask target)."""

    pre_segmentation_errors = 0.5


class _PreSegmenterErrors:
    """Half of the samples diffused from the pre-segmenter's own prediction of the patch (needs a clean-mask
    target)."""

    pre_segmentation_errors = 0.5
    pre_segmentation_source = "pre_segmenter"


class _OutOfFoldErrors(_PreSegmenterErrors):
    """:class:`_PreSegmenterErrors` with out-of-fold predictions: each case segmented by the pre-segmenter fold that
    held it out (needs every fold of the pre-segmenter)."""

    pre_segmentation_source = "out_of_fold"


class _NarrowNetwork:
    """nnU-Net's network of the plans with stage ``i`` at ``min(base_features * 2**i, max_features)`` features
    (mixin, before the trainer). Applied in ``build_network_architecture``, which nnU-Net also calls at inference,
    so training and prediction build the same network."""

    base_features: int = 16
    max_features: int = 128

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        narrow = with_features(configuration_manager, cls.base_features, cls.max_features)
        return super().build_network_architecture(plans_manager, narrow, num_input_channels, num_output_channels,
                                                  enable_deep_supervision)


class _DecayingLR:
    """nnU-Net's poly learning-rate schedule (exponent 0.9, to 0 at the last epoch) instead of the constant one of
    the optimiser it is mixed into (mixin, first)."""

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=0.9)


class _ContinuesPreSegmenter:
    """A plain nnU-Net that continues the fold's pre-segmenter (``pre_segmenter_trainers[0]``) with the refiner's
    optimiser (Adam at ``initial_lr``, constant): the refiner's training without diffusion (mixin, first)."""

    pre_segmenter_trainers: tuple[str, ...] = ()

    def configure_optimizers(self):
        optimizer = make_adam(self.network.parameters(), lr=self.initial_lr, weight_decay=1e-5)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=0.0)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.current_epoch > 0:  # resumed: its own checkpoint holds the weights
            return
        from nnunet_pdddpm.checkpoints import load_nnunet_checkpoint, trust_checkpoints_from_env
        from nnunet_pdddpm.trainers.validation import find_pre_segmenter_folder

        folder = find_pre_segmenter_folder(self)
        if folder is None:
            raise PDDDPMUserError(f"{type(self).__name__} continues {self.pre_segmenter_trainers[0]}, which has no "
                                  f"checkpoint_final.pth for fold {self.fold}; train it first.")
        path = join(folder, f"fold_{self.fold}", "checkpoint_final.pth")
        weights = load_nnunet_checkpoint(path, trust_checkpoints=trust_checkpoints_from_env())["network_weights"]
        network = self.network.module if self.is_ddp else self.network
        getattr(network, "_orig_mod", network).load_state_dict(weights)
        self.print_to_log_file(f"Continuing the network of {path}")
