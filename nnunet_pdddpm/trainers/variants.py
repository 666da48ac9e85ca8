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

The same option exists for several regimes (the paper's, ``_tiny``, ``_demoCPU``), so each option is one mixin
below (``_PredictsX0``, ``_SimulatedErrors``, ...) and a variant names its regime and its options as bases; only
the timestep range, which is the regime's, is set in the variant itself. The run length, learning rate and
foreground oversampling are instance attributes that ``nnUNetTrainer.__init__`` sets; a variant states them in
``init_settings`` (:class:`_InitSettings`) instead of repeating an ``__init__``.
"""
from __future__ import annotations

from os.path import join
from typing import Any, Mapping

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.networks.from_plans import with_features
from nnunet_pdddpm.trainers.attunet_trainer import PDDDPMAttUNetTrainer
from nnunet_pdddpm.trainers.pdddpm_trainer import PDDDPMTrainer_paper
from nnunet_pdddpm.trainers.refiner import PDDDPMTrainer, RefinerRecipe
from nnunet_pdddpm.trainers.seeding import SeededTrainingMixin
from nnunet_pdddpm.trainers.update_guard import make_adam


# ---------------------------------------------------------------- mixins (put before the trainer in the bases)
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


_TINY_RUN = {"num_epochs": 2, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 2}


# ---------------------------------------------------------------- tests and quick checks
class PDDDPMTrainer_tiny(_InitSettings, PDDDPMTrainer_paper):
    base_features = 8
    max_features = 32
    t_prime = 20
    ensemble_size = 2
    sampler = "ddim"
    steps = 4
    t_prime_sweep = (5, 10, 20)
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_tiny", "PDDDPMAttUNetTrainer", "nnUNetTrainer")
    init_settings = {**_TINY_RUN, "initial_lr": 1e-3}


class PDDDPMTrainer_tiny_preseg(_SegmentationOutput, _PreSegmenterErrors, PDDDPMTrainer_tiny):
    timestep_range = 40


class PDDDPMAttUNetTrainer_tiny(_InitSettings, PDDDPMAttUNetTrainer):
    init_settings = _TINY_RUN


class nnUNetTrainer_tiny(_NarrowNetwork, _InitSettings, SeededTrainingMixin, nnUNetTrainer):
    """Plain nnU-Net at the tiny denoiser's width (8-32), a few iterations: the refiner's starting point in tests."""

    base_features = 8
    max_features = 32
    init_settings = _TINY_RUN


class PDDDPMTrainer_tiny_refiner(RefinerRecipe, PDDDPMTrainer_tiny):
    pre_segmenter_trainers = ("nnUNetTrainer_tiny",)
    timestep_range = 20
    t_prime = 10
    t_prime_sweep = (5, 10, 20)


class PDDDPMTrainer_tiny_refinerDemo(PDDDPMTrainer_tiny_refiner):
    """The tiny demo's refiner: starts from fold 0's own predictions (one fold trained)."""

    pre_segmentation_source = "pre_segmenter"


class nnUNetTrainer_tiny_more(_ContinuesPreSegmenter, nnUNetTrainer_tiny):
    pre_segmenter_trainers = ("nnUNetTrainer_tiny",)


# ---------------------------------------------------------------- the paper's regime
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


class nnUNetTrainer_refinerCPU(nnUNetTrainer_demoCPU):
    """Plain nnU-Net at the demo's width trained to its plateau on two cores (1200 iterations of 6): the model a
    user would refine, and the starting point of the refiner benchmark (``benchmarks/benchmark_refiner.py``)."""

    init_settings = {**nnUNetTrainer_demoCPU.init_settings, "num_epochs": 48}


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
