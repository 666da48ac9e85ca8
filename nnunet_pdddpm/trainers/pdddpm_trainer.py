"""``PDDDPMTrainer_paper``: the conditional DDPM denoiser of PD-DDPM as the paper trains it, inside nnU-Net.

``PDDDPMTrainer`` (``refiner.py``) is this trainer with the refiner recipe; everything below holds for both.

Everything nnU-Net does stays (plans, folds, preprocessing, data loading and augmentation,
logging, checkpoints, ``--c``, ``-device``, ``-num_gpus``, ``torch.compile`` on CUDA); what changes
is the network (a time-conditioned U-Net fed with image channels + the noisy one-hot mask), the loss
(MSE on the model target at uniform timesteps), the optimiser (the paper's Adam, fused), bf16 autocast
instead of fp16 + grad scaling, an EMA of the weights, and validation.

The training step never waits for the device: a non-finite step is skipped by a device-side flag
(``update_guard.py``) and losses are fetched once per epoch. ``noise_draws_per_image`` > 1 trains
each augmented image at several (t, noise) draws, for GPUs that nnU-Net's CPU augmentation cannot feed.

Every setting that inference or validation needs is a class attribute, so a short subclass
changes a run (see ``variants/``), and everything is stored in the checkpoint under
``"pdddpm"`` so that inference never instantiates the trainer.
"""
from __future__ import annotations

import inspect
import math
import os
import warnings
from os.path import isdir

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_pdddpm.checkpoints import load_checkpoint_safe
from nnunet_pdddpm.diffusion import (
    SAMPLERS,
    DiffusionConfig,
    diffuse,
    encode_labels,
    encode_pre_segmentation,
    make_ddpm_scheduler,
    model_output,
    predict_x0,
    start_index,
    training_target,
)
from nnunet_pdddpm.discovery import DEFAULT_PRE_SEGMENTER_TRAINER
from nnunet_pdddpm.errors import PDDDPMUserError, install_excepthook, is_nnunet_command
from nnunet_pdddpm.inference.settings import UNCERTAINTY_KINDS, SamplingSettings
from nnunet_pdddpm.networks.from_plans import build_denoiser_from_kwargs, denoiser_kwargs_from_plans
from nnunet_pdddpm.precision import autocast
from nnunet_pdddpm.trainers.ema import EMA
from nnunet_pdddpm.trainers.pre_segmentation_errors import simulate_pre_segmentation_errors
from nnunet_pdddpm.trainers.safe_checkpoints import SafeCheckpointMixin
from nnunet_pdddpm.trainers.sampling_attribute import SamplingAttribute, apply_class_body_sampling
from nnunet_pdddpm.trainers.seeding import SeededTrainingMixin
from nnunet_pdddpm.trainers.update_guard import NonFiniteMonitor, make_adam, step_unless

PRE_SEGMENTATION_SOURCES = ("simulated", "pre_segmenter", "out_of_fold")
# class attributes that were renamed: a subclass that still sets the old name gets it applied, with a warning
RENAMED_ATTRIBUTES = {"sampling_steps": "steps"}
# the warm start's value that finds the pre-segmenter as the final validation does
WARM_START_FROM_PRE_SEGMENTER = "pre_segmenter"


class PDDDPMTrainer_paper(SeededTrainingMixin, SafeCheckpointMixin, nnUNetTrainer):
    """The paper's recipe: a denoiser trained from scratch on the diffused ground truth (epsilon prediction), sampled
    from the pre-segmenter's argmax with DDPM at T' = 300 and an ensemble of 5. Any pre-segmenter (the paper's
    attention U-Net too). The base of every PD-DDPM trainer."""

    # --- denoiser and diffusion (stored in checkpoints) ---
    diffusion_config: DiffusionConfig = DiffusionConfig()
    base_features: int | None = None  # None keeps the plan's features_per_stage; the paper used 128
    max_features: int | None = None
    attention_stages: int = 1  # self-attention at this many coarsest stages: 1 = the bottleneck only
    attention_max_size: int | None = None  # instead: every stage at most this size per axis (paper: 16, _attn16)
    num_heads: int = 1
    ema_decay: float = 0.999
    # --- sampling used by the final validation (and the defaults of nnunet_pdddpm_predict) ---
    t_prime: int = 300
    ensemble_size: int = 5
    sampler: str = "ddpm"
    steps: int | None = None  # network evaluations from T' to 0; None: every step
    soft_pre_segmentation: bool = False  # diffuse the pre-segmenter's probabilities (2p - 1) instead of its argmax
    uncertainty: str = "variance"  # the map nnunet_pdddpm_predict writes by default (``inference/uncertainty.py``)
    # w of the result (1 - w) * ensemble mean + w * pre-segmenter's probabilities (``inference/fusion.py``)
    pre_segmentation_weight: float = 0.0
    # leave lesion detection to the pre-segmenter: the denoiser reshapes lesions, never adds or removes one
    # (``inference/fusion.py``)
    lesion_gate: bool = False
    # member m sees the case mirrored along the m-th of nnU-Net's test-time mirror combinations (no extra network
    # evaluation; ``inference/ensemble_sampling.py: member_mirrorings``)
    mirrored_members: bool = False
    # the fields above as one SamplingSettings (``sampling_attribute.py``): read it, or set it whole in a subclass
    # (``sampling = dataclasses.replace(Parent.sampling, t_prime=100, steps=5)``) or on an instance
    sampling = SamplingAttribute()
    # T' candidates of the final validation's sweep (automatic T', ``inference/t_prime_sweep.py``); () for none.
    # Values above the training timestep range are skipped.
    t_prime_sweep: tuple[int, ...] = (50, 100, 200, 300, 400, 500)
    # --- training for the PD-DDPM regime (stored in checkpoints under "training") ---
    # timesteps are drawn from [0, timestep_range); inference never evaluates t >= T', so any value >= t_prime
    # serves PD-DDPM (None: all T, needed for vanilla sampling from noise)
    timestep_range: int | None = None
    # fraction of training samples diffused from an imperfect mask while the target stays the ground truth; needs
    # prediction_type "sample". The mask comes from ``pre_segmentation_source``: "simulated" (label-space errors,
    # ``pre_segmentation_errors.py``), "pre_segmenter" (the trained pre-segmenter of this fold, found like the final
    # validation's, segments the augmented training patch) or "out_of_fold" (the pre-segmenter fold that held the
    # case out segments it: the errors it makes on unseen cases; ``training_pre_segmenter.py``)
    pre_segmentation_errors: float = 0.0
    pre_segmentation_source: str = "simulated"
    # with a trained pre-segmenter as source: diffuse its probabilities (2p - 1), as sampling with
    # soft_pre_segmentation does, instead of its argmax
    pre_segmentation_soft: bool = False
    # with a trained pre-segmenter as source: its logits averaged over nnU-Net's test-time mirror combinations (the
    # pre-segmenter's inference_allowed_mirroring_axes), as the sampling start is predicted with nnU-Net's default
    # test-time augmentation; costs one pre-segmenter evaluation per combination (4 in 2D, 8 in 3D)
    pre_segmentation_mirroring: bool = False
    # start the denoiser as a trained PlainConvUNet (``networks/warm_start.py``): "pre_segmenter" finds it as the
    # final validation does (same dataset, plans, configuration and fold), or the path of its checkpoint; None
    # trains from scratch. Needs the softmax x0 output, so that the initial x0 estimate is nnU-Net's softmax
    warm_start: str | None = None
    # pre-segmenters searched for the final validation, in this order (same dataset, plans, configuration, fold):
    # nnunet_pdddpm_predict's default -preseg_tr first, then the paper's attention U-Net
    pre_segmenter_trainers: tuple[str, ...] = (DEFAULT_PRE_SEGMENTER_TRAINER, "PDDDPMAttUNetTrainer")
    # --- throughput ---
    # (t, noise) draws per augmented image; the loader's batch shrinks by this factor so the network's batch
    # (images x draws) stays at most the plan's, and augmentation work per step falls by it
    noise_draws_per_image: int = 1
    # --- numerical safety ---
    max_consecutive_nonfinite: int = 20

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass that sets a renamed attribute keeps working: the old name is applied to the new one with a
        warning; setting both is refused, since one of them would be ignored."""
        super().__init_subclass__(**kwargs)
        for old, new in RENAMED_ATTRIBUTES.items():
            if old not in cls.__dict__:
                continue
            if new in cls.__dict__:
                raise PDDDPMUserError(f"{cls.__name__} sets both {old} and {new}; {old} is the old name of {new}: "
                                      f"keep only {new}.")
            warnings.warn(f"{cls.__name__}.{old} is deprecated and will be removed in 0.3; set {new} instead (the "
                          f"value is used as {new}).", FutureWarning, stacklevel=2)
            setattr(cls, new, cls.__dict__[old])
        apply_class_body_sampling(cls)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if is_nnunet_command():  # nnUNetv2_train is our entry point: its user errors print one sentence
            install_excepthook()  # (a user's own Python keeps its excepthook and sees the exception)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = 1e-4
        self.weight_decay = 1e-5
        # bf16 autocast on CUDA needs no loss scaling
        self.grad_scaler = None
        self.ema: EMA | None = None
        self.nonfinite = NonFiniteMonitor(lambda: self.max_consecutive_nonfinite, self.print_to_log_file)
        self.draws_per_image = 1  # set with the batch size
        self.training_pre_segmenter: nn.Module | None = None  # set in initialize for pre_segmentation_source
        self.warm_start_source: str | None = None  # the checkpoint the warm start read (set at the start of training)
        self._check_supported_labels()
        self._check_sampling_attributes()
        self._check_training_options()

    # ---------------------------------------------------------------- set-up
    def _check_supported_labels(self) -> None:
        if self.label_manager.has_regions:
            raise PDDDPMUserError(
                "PD-DDPM supports nnU-Net datasets with plain labels, not region-based training "
                "(dataset.json 'regions_class_order'); convert the regions to labels to use PDDDPMTrainer."
            )
        if self.label_manager.has_ignore_label:
            raise PDDDPMUserError(
                "PD-DDPM does not support nnU-Net's ignore label; remove the 'ignore' label from dataset.json."
            )

    def _check_sampling_attributes(self) -> None:
        """The final validation's sampling settings, checked before any training and named as attributes."""
        name = type(self).__name__
        T = self.diffusion_config.num_train_timesteps
        problems = []
        if not isinstance(self.t_prime, int) or not 0 <= self.t_prime <= T:
            problems.append(f"t_prime must be an integer in [0, {T}], got {self.t_prime!r}")
        if not isinstance(self.ensemble_size, int) or self.ensemble_size < 1:
            problems.append(f"ensemble_size must be an integer of at least 1, got {self.ensemble_size!r}")
        if self.sampler not in SAMPLERS:
            problems.append(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            problems.append(f"steps must be None (every step) or an integer of at least 1, got {self.steps!r}")
        elif self.steps is not None and isinstance(self.t_prime, int) and 0 < self.t_prime < self.steps:
            problems.append(f"steps must be at most t_prime ({self.t_prime}): a reverse process from T' has only "
                            f"T' steps, got {self.steps!r}")
        weight = self.pre_segmentation_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
            problems.append(f"pre_segmentation_weight must be a number in [0, 1], got "
                            f"{self.pre_segmentation_weight!r}")
        for flag in ("lesion_gate", "mirrored_members"):
            if not isinstance(getattr(self, flag), bool):
                problems.append(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.uncertainty not in UNCERTAINTY_KINDS:
            problems.append(f"uncertainty must be one of {', '.join(UNCERTAINTY_KINDS)}, got {self.uncertainty!r}")
        if any(not isinstance(t, int) or not 0 < t <= T for t in self.t_prime_sweep):
            problems.append(f"t_prime_sweep must hold integers in (0, {T}], got {self.t_prime_sweep!r}")
        if problems:
            raise PDDDPMUserError(f"{name}.{problems[0]}.")

    def _check_training_options(self) -> None:
        T = self.diffusion_config.num_train_timesteps
        name = type(self).__name__
        if self.warm_start is not None and self.diffusion_config.output_activation != "softmax":
            raise PDDDPMUserError(f"{name}.warm_start needs diffusion_config = DiffusionConfig(prediction_type="
                                  f"'sample', output_activation='softmax'): the warm-started network outputs nnU-Net's "
                                  f"class logits.")
        if self.pre_segmentation_soft and self.pre_segmentation_source == "simulated":
            raise PDDDPMUserError(f"{name}.pre_segmentation_soft needs a trained pre-segmenter as "
                                  f"pre_segmentation_source ('pre_segmenter' or 'out_of_fold'): simulated errors "
                                  f"have no probabilities.")
        if not isinstance(self.pre_segmentation_mirroring, bool):
            raise PDDDPMUserError(f"{name}.pre_segmentation_mirroring must be True or False, got "
                                  f"{self.pre_segmentation_mirroring!r}.")
        if self.pre_segmentation_mirroring and self.pre_segmentation_source == "simulated":
            raise PDDDPMUserError(f"{name}.pre_segmentation_mirroring needs a trained pre-segmenter as "
                                  f"pre_segmentation_source ('pre_segmenter' or 'out_of_fold'): simulated errors "
                                  f"are not predicted.")
        if self.timestep_range is not None and not self.t_prime <= self.timestep_range <= T:
            raise PDDDPMUserError(f"{name}.timestep_range must lie between t_prime ({self.t_prime}) and T ({T}), "
                                  f"got {self.timestep_range}; the denoiser is evaluated at every t < t_prime.")
        if not 0 <= self.pre_segmentation_errors <= 1:
            raise PDDDPMUserError(f"{name}.pre_segmentation_errors is a fraction of samples in [0, 1], got "
                                  f"{self.pre_segmentation_errors}.")
        if self.pre_segmentation_source not in PRE_SEGMENTATION_SOURCES:
            raise PDDDPMUserError(f"{name}.pre_segmentation_source must be one of "
                                  f"{', '.join(PRE_SEGMENTATION_SOURCES)}, got {self.pre_segmentation_source!r}.")
        if self.pre_segmentation_errors > 0 and self.diffusion_config.prediction_type != "sample":
            raise PDDDPMUserError(
                f"{name}.pre_segmentation_errors needs diffusion_config.prediction_type 'sample': with "
                f"'{self.diffusion_config.prediction_type}' the target for a mask that is not the ground truth "
                f"grows like 1/sqrt(1 - alpha_bar) at small t.")

    @property
    def max_training_timestep(self) -> int:
        """Timesteps are drawn uniformly from [0, max_training_timestep)."""
        return self.timestep_range or self.diffusion_config.num_train_timesteps

    @property
    def labels(self) -> list[int]:
        """Label values in channel order of the mask encoding (background first)."""
        return list(self.label_manager.all_labels)

    @classmethod
    def denoiser_kwargs(cls, configuration_manager: ConfigurationManager, num_image_channels: int,
                        num_classes: int) -> dict:
        """JSON-like constructor arguments of the denoiser (saved in checkpoints)."""
        return denoiser_kwargs_from_plans(configuration_manager, num_image_channels, num_classes,
                                          base_features=cls.base_features, max_features=cls.max_features,
                                          attention_stages=cls.attention_stages, num_heads=cls.num_heads,
                                          attention_max_size=cls.attention_max_size)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The denoiser for ``num_input_channels`` image channels and ``num_output_channels`` mask channels.

        A classmethod (nnU-Net calls it on the class at inference) so that subclasses' width settings apply.
        """
        return build_denoiser_from_kwargs(cls.denoiser_kwargs(configuration_manager, num_input_channels,
                                                              num_output_channels))

    def initialize(self) -> None:
        if _pretrained_weights_requested():
            raise PDDDPMUserError(
                f"nnUNetv2_train -pretrained_weights loads a checkpoint as a full pickle and by key names that the "
                f"denoiser does not have; to start {type(self).__name__} from a trained nnU-Net, set the class "
                f"attribute warm_start = 'pre_segmenter' (or the checkpoint's path) in a subclass instead.")
        if self.preprocessed_dataset_folder is not None and not isdir(self.preprocessed_dataset_folder):
            raise PDDDPMUserError(
                f"Configuration '{self.configuration_name}' of {self.plans_manager.dataset_name} is not preprocessed "
                f"({self.preprocessed_dataset_folder} is missing); run nnUNetv2_plan_and_preprocess -d "
                f"{self.plans_manager.dataset_name} -c {self.configuration_name} first."
            )
        super().initialize()
        self.ema = EMA(self._bare_network(), self.ema_decay)
        self.scheduler = make_ddpm_scheduler(self.diffusion_config)
        if self.pre_segmentation_errors > 0 and self.pre_segmentation_source != "simulated":
            from nnunet_pdddpm.trainers.training_pre_segmenter import load_training_pre_segmenter

            self.training_pre_segmenter = load_training_pre_segmenter(self)

    def on_train_start(self) -> None:
        """nnU-Net's start of training, then the warm start of a new run (a resumed one keeps its weights)."""
        super().on_train_start()
        if self.warm_start is not None and self.current_epoch == 0:
            self._warm_start()

    def warm_start_checkpoint(self) -> str:
        """The checkpoint the denoiser starts from (``warm_start``); one sentence if there is none."""
        if self.warm_start != WARM_START_FROM_PRE_SEGMENTER:
            if not os.path.isfile(self.warm_start):
                raise PDDDPMUserError(f"{type(self).__name__}.warm_start names {self.warm_start}, which does not "
                                      f"exist; give the path of a trained nnU-Net's checkpoint_final.pth.")
            return self.warm_start
        from nnunet_pdddpm.trainers.validation import find_pre_segmenter_folder

        folder = find_pre_segmenter_folder(self)
        if folder is None:
            raise PDDDPMUserError(
                f"{type(self).__name__} starts from its pre-segmenter, but none of "
                f"{', '.join(self.pre_segmenter_trainers)} has a checkpoint_final.pth for fold {self.fold} of "
                f"{self.plans_manager.dataset_name} ({self.configuration_name}); train it first (nnUNetv2_train "
                f"{self.plans_manager.dataset_name} {self.configuration_name} {self.fold} -tr "
                f"{self.pre_segmenter_trainers[0]}).")
        return os.path.join(folder, f"fold_{self.fold}", "checkpoint_final.pth")

    def _warm_start(self) -> None:
        from nnunet_pdddpm.checkpoints import load_nnunet_checkpoint, trust_checkpoints_from_env
        from nnunet_pdddpm.networks.warm_start import warm_start_denoiser

        path = self.warm_start_checkpoint()
        checkpoint = load_nnunet_checkpoint(path, map_location="cpu", trust_checkpoints=trust_checkpoints_from_env())
        if "network_weights" not in checkpoint:
            raise PDDDPMUserError(f"{path} is not an nnU-Net checkpoint (no network_weights); give the checkpoint "
                                  f"of a model trained with nnUNetv2_train.")
        warm_start_denoiser(self._bare_network(), checkpoint["network_weights"], path)
        self.ema = EMA(self._bare_network(), self.ema_decay)  # the average starts at the warm weights too
        self.warm_start_source = path
        self.print_to_log_file(f"Warm start: the denoiser starts as the network of {path} "
                               f"({checkpoint.get('trainer_name', 'unknown trainer')}); noisy-mask inputs start at 0")

    def _set_batch_size_and_oversample(self) -> None:
        """nnU-Net's (per-GPU) batch, divided between images and ``noise_draws_per_image`` draws of each."""
        super()._set_batch_size_and_oversample()
        if self.noise_draws_per_image < 1:
            raise PDDDPMUserError(f"noise_draws_per_image must be >= 1, got {self.noise_draws_per_image}.")
        network_batch = self.batch_size
        self.batch_size = max(1, network_batch // self.noise_draws_per_image)
        self.draws_per_image = max(1, network_batch // self.batch_size)
        # nnU-Net's loader forces foreground in the last batch - round(batch (1 - p)) images of a batch; at the
        # plan's batch that is `forced` of `network_batch` samples. A smaller loader batch keeps at least the
        # same share of foreground-forced images (rounded up): with batch 1, round(1 - p) would force none
        if self.batch_size < network_batch:
            forced = network_batch - round(network_batch * (1 - self.oversample_foreground_percent))
            self.oversample_foreground_percent = min(self.batch_size, math.ceil(forced / self.draws_per_image)) / \
                self.batch_size
        if self.draws_per_image > 1 or self.noise_draws_per_image > 1:
            self.print_to_log_file(
                f"{self.batch_size} augmented images per step ({self.oversample_foreground_percent:.0%} with forced "
                f"foreground), each at {self.draws_per_image} (t, noise) draws: network batch "
                f"{self.batch_size * self.draws_per_image} (the plan's {network_batch})"
                + ("" if self.draws_per_image == self.noise_draws_per_image else
                   f"; noise_draws_per_image = {self.noise_draws_per_image} was adjusted to fill the plan's batch"))

    def configure_optimizers(self):
        optimizer = make_adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        # the paper trains at a constant learning rate; exponent 0 keeps nnU-Net's scheduler interface
        lr_scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=0.0)
        return optimizer, lr_scheduler

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """The denoiser has a single output; nothing to switch."""

    def plot_network_architecture(self) -> None:
        """nnU-Net's plot calls the network with one input; the denoiser also needs timesteps."""

    def _autocast(self):
        return autocast(self.device)

    # ---------------------------------------------------------------- training
    def _noisy_input(self, data: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                     noise: torch.Tensor | None = None, error_fraction: float = 0.0, keys: list[str] | None = None):
        """(x0 of the ground truth, noise, x_t); with ``error_fraction`` that share of the samples is diffused
        from an imperfect start (``_imperfect_starts``) instead of the ground truth."""
        x0 = encode_labels(target, self.labels)
        noise = torch.randn_like(x0) if noise is None else noise
        start = x0
        if error_fraction > 0:
            # the whole batch is segmented, then the rows chosen: segmenting only the chosen rows changes the
            # pre-segmenter's numerics (batch size) and so a seeded run (measured on the demo: Dice 0.841 -> 0.839)
            wrong = self._imperfect_starts(data, target, keys)
            rows = (torch.rand(x0.shape[0], device=x0.device) < error_fraction).reshape(-1, *([1] * (x0.ndim - 1)))
            start = torch.where(rows, wrong, x0)
        x_t = diffuse(self.scheduler, start, noise, timesteps)
        return x0, noise, x_t

    def _imperfect_starts(self, data: torch.Tensor, target: torch.Tensor, keys: list[str] | None) -> torch.Tensor:
        """Encoded starts (B, K, ...) in [-1, 1] with a pre-segmenter's errors (``pre_segmentation_source``): its
        one-hot argmax, or with ``pre_segmentation_soft`` its probabilities as 2p - 1 (what soft sampling diffuses)."""
        classes = list(range(len(self.labels)))
        if self.training_pre_segmenter is None:
            return encode_labels(simulate_pre_segmentation_errors(self._label_indices(target), len(classes)), classes)
        with torch.no_grad(), self._autocast():
            logits = self.training_pre_segmenter(data, keys).float()
        return encode_pre_segmentation(torch.softmax(logits, 1), self.pre_segmentation_soft)

    def _label_indices(self, target: torch.Tensor) -> torch.Tensor:
        """nnU-Net label values (B, 1, ...) -> channel indices of the mask encoding (background 0)."""
        idx = torch.zeros_like(target, dtype=torch.long)
        for i, lab in enumerate(self.labels):
            idx[target == lab] = i
        return idx

    def draw_timesteps(self, batch: int) -> torch.Tensor:
        """Training timesteps (batch,), uniform in [0, max_training_timestep)."""
        return torch.randint(0, self.max_training_timestep, (batch,), device=self.device)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        keys = list(batch.get("keys", [])) or None
        if self.draws_per_image > 1:
            data = data.repeat_interleave(self.draws_per_image, 0)
            target = target.repeat_interleave(self.draws_per_image, 0)
            keys = None if keys is None else [k for k in keys for _ in range(self.draws_per_image)]
        timesteps = self.draw_timesteps(data.shape[0])
        x0, noise, x_t = self._noisy_input(data, target, timesteps, error_fraction=self.pre_segmentation_errors,
                                           keys=keys)
        goal = training_target(self.scheduler, x0, noise, timesteps)

        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(torch.cat((data, x_t), 1), timesteps)
        loss = self._denoising_loss(output, goal, target)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), 1.0)
        # NaN/inf in the loss or any gradient: skip the update (weights, Adam state, EMA), decided on the device
        skipped = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        step_unless(self.optimizer, skipped)
        self.ema.update(self._bare_network(), skip=skipped)
        self.nonfinite.record(skipped, loss)
        return {"loss": loss.detach()}

    def _denoising_loss(self, output: torch.Tensor, goal: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE on the model target, or, for softmax outputs, nnU-Net's Dice + CE of the logits (``self.loss``)."""
        if self.diffusion_config.output_activation == "softmax":
            return self.loss(output.float(), self._label_indices(target))
        return F.mse_loss(output.float(), goal)

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        """One device-to-host copy of the epoch's losses; the mean is over the steps that were not skipped."""
        self.nonfinite.flush()
        losses = torch.stack([torch.as_tensor(o["loss"], device=self.device).float() for o in train_outputs])
        losses = losses.cpu().numpy()
        finite = losses[np.isfinite(losses)]
        mean = np.array(finite.mean() if finite.size else np.nan)
        super().on_train_epoch_end([{"loss": mean}])

    # ---------------------------------------------------------------- per-epoch validation
    def validation_step(self, batch: dict) -> dict:
        """Pseudo Dice of the EMA model's one-step x0 estimate from the ground truth diffused to T'.

        The loss is the training MSE at the training timesteps (comparable to the training loss).
        """
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        b = data.shape[0]
        net = self.ema.shadow
        t_rand = self.draw_timesteps(b)
        keys = list(batch.get("keys", [])) or None
        x0, noise, x_t = self._noisy_input(data, target, t_rand, error_fraction=self.pre_segmentation_errors,
                                           keys=keys)
        t_val = torch.full((b,), start_index(max(1, self.t_prime)), device=self.device, dtype=torch.long)
        # from the pre-segmenter's own mask when training uses it: the pseudo Dice then measures the correction
        _, _, x_tp = self._noisy_input(data, target, t_val, noise,
                                       error_fraction=1.0 if self.training_pre_segmenter is not None else 0.0,
                                       keys=keys)
        with self._autocast():
            out_rand = net(torch.cat((data, x_t), 1), t_rand)
            out_tp = net(torch.cat((data, x_tp), 1), t_val)
        loss = self._denoising_loss(out_rand, training_target(self.scheduler, x0, noise, t_rand), target)
        x0_hat = predict_x0(self.scheduler, model_output(self.diffusion_config, out_tp.float()), x_tp, t_val)

        seg = x0_hat.argmax(1, keepdim=True)
        onehot = torch.zeros_like(x0_hat).scatter_(1, seg, 1)
        target_idx = self._label_indices(target)
        axes = [0] + list(range(2, x0_hat.ndim))
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target_idx, axes=axes)
        # background is not part of nnU-Net's pseudo Dice
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp[1:].detach().cpu().numpy(),
                "fp_hard": fp[1:].detach().cpu().numpy(), "fn_hard": fn[1:].detach().cpu().numpy()}

    def sampling_defaults(self) -> SamplingSettings:
        """Deprecated: ``self.sampling`` is the same value."""
        warnings.warn("sampling_defaults() is deprecated and will be removed in 0.3; read the sampling attribute "
                      "instead.", FutureWarning, stacklevel=2)
        return self.sampling

    # ---------------------------------------------------------------- checkpoints
    def pdddpm_settings(self) -> dict:
        """Everything inference needs besides the plans and dataset.json (stored as checkpoint['pdddpm'])."""
        return {
            "diffusion": self.diffusion_config.to_dict(),
            "denoiser_kwargs": self.denoiser_kwargs(self.configuration_manager, self.num_input_channels,
                                                    self.label_manager.num_segmentation_heads),
            "labels": self.labels,
            "num_image_channels": self.num_input_channels,
            "sampling": self.sampling.stored(),
            "training": {"timestep_range": self.max_training_timestep,
                         "pre_segmentation_errors": self.pre_segmentation_errors,
                         "pre_segmentation_source": self.pre_segmentation_source,
                         "pre_segmentation_soft": self.pre_segmentation_soft,
                         "pre_segmentation_mirroring": self.pre_segmentation_mirroring,
                         "warm_start": self.warm_start, "warm_start_source": self.warm_start_source},
        }

    def checkpoint_contents(self) -> dict:
        """nnU-Net's keys (written by :class:`SafeCheckpointMixin`), the EMA weights, and what inference needs."""
        return {**super().checkpoint_contents(), "ema": self.ema.state_dict(), "pdddpm": self.pdddpm_settings()}

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """Resume from our own checkpoint: nnU-Net's fields (:class:`SafeCheckpointMixin`), then the EMA weights.

        A file is read here rather than by the mixin: ours hold plain data only, so the safe unpickler needs no
        allow-list and there is nothing to opt in to.
        """
        checkpoint = (load_checkpoint_safe(filename_or_checkpoint, map_location=self.device)
                      if isinstance(filename_or_checkpoint, (str, os.PathLike)) else filename_or_checkpoint)
        if "ema" not in checkpoint:  # before any weights load: one sentence rather than a state-dict mismatch
            raise PDDDPMUserError(f"{filename_or_checkpoint} is not a PDDDPMTrainer checkpoint (no EMA weights).")
        self._check_recipe(checkpoint, filename_or_checkpoint)
        super().load_checkpoint(checkpoint)
        self.ema.load_state_dict(checkpoint["ema"])
        self.warm_start_source = checkpoint.get("pdddpm", {}).get("training", {}).get("warm_start_source")

    def _check_recipe(self, checkpoint: dict, source) -> None:
        """Refuse to resume (or validate) a checkpoint written with another recipe: its weights mean something else
        (another model target, or an initialisation this trainer would not have made). Seen when a folder of the
        paper's recipe, trained by ``PDDDPMTrainer`` of nnunet-pdddpm 0.1.0, is resumed with ``--c``."""
        stored = checkpoint.get("pdddpm", {})
        # only what is known before initialize(): nnU-Net's --c loads the checkpoint first
        mine = self.diffusion_config.to_dict()
        differences = []
        if "diffusion" in stored:
            differences += [f"{k} {stored['diffusion'].get(k)!r} (this trainer: {v!r})"
                            for k, v in mine.items() if k in stored["diffusion"]
                            and stored["diffusion"][k] != v]
        stored_warm = stored.get("training", {}).get("warm_start")
        if stored_warm != self.warm_start and "training" in stored:
            differences.append(f"warm_start {stored_warm!r} (this trainer: {self.warm_start!r})")
        if differences:
            raise PDDDPMUserError(
                f"{source if isinstance(source, (str, os.PathLike)) else 'The checkpoint'} was written with another "
                f"recipe than {type(self).__name__} ({'; '.join(differences)}); resume or validate it with the "
                f"trainer that wrote it (PDDDPMTrainer_paper for the paper's recipe, which older versions of "
                f"PDDDPMTrainer trained), or train into a new output folder.")

    # ---------------------------------------------------------------- final validation
    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Real segmentations of the validation cases and nnU-Net's ``summary.json`` (see ``validation.py``)."""
        from nnunet_pdddpm.trainers.validation import run_final_validation

        run_final_validation(self, save_probabilities)



def _pretrained_weights_requested() -> bool:
    """True inside nnU-Net's ``maybe_load_checkpoint`` with ``-pretrained_weights``: it initialises the trainer and
    then unpickles the file in full (``weights_only=False``), so the refusal has to come from ``initialize``."""
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "maybe_load_checkpoint" and frame.f_locals.get("pretrained_weights_file"):
            return True
        frame = frame.f_back
    return False
