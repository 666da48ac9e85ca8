"""The settings of PD-DDPM inference: the method's (what is sampled) and the performance knobs (how fast).

Both are frozen: a caller changes a setting with ``dataclasses.replace``, which validates again, so a
predictor never samples with settings nobody checked. Field names are the command-line flag names
(``-t_prime``, ``-ensemble_size``, ``--soft_pre_segmentation``, ...). A :class:`PerformanceSettings`
never changes a sample's numbers (beyond floating-point reordering inside the network).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from nnunet_pdddpm.diffusion import SAMPLERS
from nnunet_pdddpm.errors import PDDDPMUserError

#: the maps of ``uncertainty.py``; ``none`` writes no map
UNCERTAINTY_KINDS = ("variance", "entropy", "expected_entropy", "mutual_information", "none")
#: the settings that mix the pre-segmenter's probabilities into the result (meaningless for vanilla sampling)
FUSION_FIELDS = ("pre_segmentation_weight", "confidence_gate", "lesion_gate")


def check_at_least(flag: str, value: int | float | None, low: int | float) -> None:
    """One sentence when ``value`` (None: unset) is below ``low``; shared by the settings and the CLI checks."""
    if value is not None and value < low:
        raise PDDDPMUserError(f"{flag} must be at least {low}, got {value}.")


def check_steps_within_t_prime(steps: int | None, t_prime: int, t_prime_source: str, flag: str = "-steps") -> None:
    """``-steps`` network evaluations cannot exceed the T' steps of the reverse process (T' = 0 takes none)."""
    if steps is not None and t_prime > 0 and steps > t_prime:
        raise PDDDPMUserError(f"{flag} {steps} exceeds T'={t_prime} ({t_prime_source}): a reverse process from T' "
                              f"has only T' steps; use {flag} {t_prime} or fewer.")


def check_ensemble_covers_folds(ensemble_size: int, num_folds: int, per_fold: bool) -> None:
    """``-ensemble_size`` is the total per case: every fold must draw at least one sample."""
    if not per_fold and ensemble_size < num_folds:
        raise PDDDPMUserError(f"-ensemble_size {ensemble_size} is the total number of samples per case, "
                              f"fewer than the {num_folds} folds (-f), so some folds would not contribute; use "
                              f"-ensemble_size {num_folds} or more, fewer folds, or --ensemble_per_fold.")


@dataclass(frozen=True)
class DenoiserLimits:
    """What a loaded denoiser allows: its T, the timesteps it was trained on (``timestep_range``; T when all),
    its folds and classes. :meth:`SamplingSettings.resolve` checks settings against them."""

    num_train_timesteps: int
    trained_timesteps: int
    num_folds: int
    num_classes: int
    trainer_name: str = "this denoiser"


@dataclass(frozen=True)
class SamplingSettings:
    """How a case is sampled (the method).

    t_prime: the paper's T' (reverse steps start at index t_prime - 1; 0 returns the pre-segmentation).
    ensemble_size: samples per case (paper: 5), dealt out over the folds; their mean is the probability map.
    ensemble_per_fold: every fold draws ``ensemble_size`` samples instead (F x N in all, as before 0.2).
    sampler / steps: ``ddpm`` (ancestral, every step unless ``steps``), ``ddim`` or ``dpm++`` with ``steps``.
    vanilla: the baseline: pure noise at T and the full reverse process (no pre-segmentation).
    uncertainty: ``variance`` across the ensemble (paper), predictive ``entropy``, its split into
        ``expected_entropy`` (aleatoric) and ``mutual_information`` (the members' disagreement), or ``none``.
    uncertainty_per_class: also return one uncertainty map per class (variance of that class's probability,
        or with ``entropy`` its binary entropy); the scalar map is unchanged.
    soft_pre_segmentation: encode the pre-segmenter's probabilities as 2p - 1 instead of its argmax.
    pre_segmentation_weight (flag ``-preseg_weight``): final probabilities = (1 - w) ensemble mean + w
        pre-segmenter's probabilities; with fusion (or the gate) the ``entropy`` map is the entropy of these final
        probabilities, the other maps stay the ensemble's.
    confidence_gate: a voxel keeps the ensemble's (fused) probabilities only where the ensemble mean's largest class
        probability reaches the gate, elsewhere the pre-segmenter's; valid in (1/K, 1] (the largest of K
        probabilities is never below 1/K, so a lower gate never keeps the pre-segmentation), checked in (0, 1]
        here and against K by the predictor.
    lesion_gate: lesion detection stays the pre-segmenter's: a lesion (connected component of a foreground class)
        the result adds where the pre-segmenter has none, or one of the pre-segmenter's the result no longer
        touches, takes the pre-segmenter's probabilities; the refiner reshapes lesions but neither adds nor
        removes them (``fusion.keep_pre_segmented_lesions``).
    mirrored_members: member m sees the case mirrored along the m-th of nnU-Net's test-time mirror combinations
        of the model's allowed axes (none, each axis, pairs, ..., in turn; ``ensemble_sampling.member_mirrorings``),
        and its result is mirrored back: the ensemble averages over mirrorings as nnU-Net's test-time augmentation
        does, at no extra network evaluation. A model that allows no mirroring samples unmirrored.
    case_scores: also score each case (pairwise Dice of the members, mean uncertainty); stitching every
        member's patches costs M x K floats per voxel while a case is sampled.
    """

    t_prime: int = 300
    ensemble_size: int = 5
    ensemble_per_fold: bool = False
    sampler: str = "ddpm"
    steps: int | None = None
    seed: int = 0
    vanilla: bool = False
    uncertainty: str = "variance"
    uncertainty_per_class: bool = False
    soft_pre_segmentation: bool = False
    pre_segmentation_weight: float = 0.0
    confidence_gate: float | None = None
    lesion_gate: bool = False
    mirrored_members: bool = False
    case_scores: bool = True

    def __post_init__(self) -> None:
        check_at_least("-t_prime", self.t_prime, 0)
        check_at_least("-ensemble_size", self.ensemble_size, 1)
        check_at_least("-steps", self.steps, 1)
        check_at_least("-seed", self.seed, 0)  # numpy's SeedSequence takes non-negative integers only
        if self.sampler not in SAMPLERS:
            raise PDDDPMUserError(f"-sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}.")
        if self.uncertainty not in UNCERTAINTY_KINDS:
            raise PDDDPMUserError(f"-uncertainty must be one of {', '.join(UNCERTAINTY_KINDS)}.")
        if self.uncertainty_per_class and self.uncertainty == "none":
            raise PDDDPMUserError("--uncertainty_per_class needs an uncertainty: use -uncertainty variance or "
                                  "entropy.")
        if self.uncertainty_per_class and self.uncertainty not in ("variance", "entropy", "none"):
            raise PDDDPMUserError(f"--uncertainty_per_class is defined for -uncertainty variance and entropy only "
                                  f"(a class's variance or binary entropy), not {self.uncertainty}.")
        if not 0 <= self.pre_segmentation_weight <= 1:
            raise PDDDPMUserError(f"-preseg_weight must be in [0, 1], got {self.pre_segmentation_weight}.")
        if self.confidence_gate is not None and not 0 < self.confidence_gate <= 1:
            raise PDDDPMUserError(f"-confidence_gate must be in (1/K, 1] for K classes, got {self.confidence_gate}.")
        if self.vanilla and self.fuses_pre_segmentation:
            raise PDDDPMUserError("-preseg_weight, -confidence_gate and --lesion_gate mix in the pre-segmenter's "
                                  "probabilities, which --vanilla does not use; drop them or --vanilla.")

    @property
    def fuses_pre_segmentation(self) -> bool:
        """Whether the result mixes in the pre-segmenter's probabilities (``fusion.py``)."""
        return self.pre_segmentation_weight > 0 or self.confidence_gate is not None or self.lesion_gate

    def with_overrides(self, **changes) -> SamplingSettings:
        """These settings with ``changes`` (None values ignored); a new ``sampler`` without ``steps`` drops the
        old steps, which were chosen for the old sampler, and ``vanilla`` without fusion settings drops the
        defaults' fusion (there is no pre-segmentation to mix in; asked for explicitly, it is an error)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes.get("sampler", self.sampler) != self.sampler and "steps" not in changes:
            changes["steps"] = None
        if changes.get("vanilla", self.vanilla) and not any(f in changes for f in FUSION_FIELDS):
            changes.update(pre_segmentation_weight=0.0, confidence_gate=None, lesion_gate=False)
        return replace(self, **changes)

    def at_t_prime(self, t_prime: int) -> SamplingSettings:
        """These settings at another T' with at most every step: a T' chosen by a sweep may be below ``steps``
        (the sweep samples its candidates the same way)."""
        steps = None if self.steps is None or self.steps >= t_prime else self.steps
        return replace(self, t_prime=int(t_prime), steps=steps)

    def effective_t_prime(self, num_train_timesteps: int) -> int:
        return num_train_timesteps if self.vanilla else self.t_prime

    def validate(self, num_train_timesteps: int) -> None:
        """Raise :class:`PDDDPMUserError` with one sentence if T' exceeds the denoiser's T."""
        if self.t_prime > num_train_timesteps:
            raise PDDDPMUserError(f"-t_prime must be between 0 and T={num_train_timesteps}, got {self.t_prime}.")

    def resolve(self, limits: DenoiserLimits, t_prime_source: str = "-t_prime") -> SamplingSettings:
        """These settings, checked against a loaded denoiser: the one place where T' (against T and the trained
        timesteps), steps (against T'), the ensemble (against the folds) and the confidence gate (against the
        classes) are checked, each failure one :class:`PDDDPMUserError` sentence. ``t_prime_source`` says where
        T' came from (the flag, or the validation sweep's file) for the steps message.

        A denoiser trained on timesteps below ``trained_timesteps`` is never run above them (T' beyond, or
        vanilla sampling from T), where it never learned anything.
        """
        T = limits.num_train_timesteps
        self.validate(T)
        t_prime = self.effective_t_prime(T)
        if self.vanilla:
            check_steps_within_t_prime(self.steps, T, "T, for vanilla DDPM")
        else:
            check_steps_within_t_prime(self.steps, t_prime, t_prime_source)
        check_ensemble_covers_folds(self.ensemble_size, limits.num_folds, self.ensemble_per_fold)
        if t_prime > limits.trained_timesteps:
            asked = "--vanilla (sampling from T)" if self.vanilla else f"-t_prime {self.t_prime}"
            raise PDDDPMUserError(
                f"This denoiser ({limits.trainer_name}) was trained on timesteps below {limits.trained_timesteps} "
                f"(its timestep_range), so {asked} would run it where it never learned; use -t_prime "
                f"{limits.trained_timesteps} or less, or a denoiser trained on all timesteps.")
        K = limits.num_classes
        if self.confidence_gate is not None and self.confidence_gate <= 1 / K:
            raise PDDDPMUserError(f"-confidence_gate must be above 1/K = {1 / K:.3g} for these K = {K} classes (the "
                                  f"largest class probability is never below it), got {self.confidence_gate}.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def stored(self) -> dict:
        """The fields a denoiser checkpoint keeps as its defaults (``checkpoint["pdddpm"]["sampling"]``)."""
        return {k: getattr(self, k) for k in STORED_FIELDS}

    @classmethod
    def from_stored(cls, stored: dict) -> SamplingSettings:
        """The defaults a checkpoint stored; fields it predates take the paper's values."""
        return cls(**{k: stored[k] for k in STORED_FIELDS if k in stored})


#: what a checkpoint stores of its trainer's sampling (the rest is chosen per prediction run)
STORED_FIELDS = ("t_prime", "ensemble_size", "sampler", "steps", "soft_pre_segmentation", "uncertainty",
                 "pre_segmentation_weight", "lesion_gate", "mirrored_members")


@dataclass(frozen=True)
class PerformanceSettings:
    """How fast a case is sampled; none of these changes the samples.

    max_batch_size: samples (patches x members) per denoiser call.
    memory_budget_gb: if set, the batch is the largest (up to max_batch_size) whose estimated activation
        memory fits this many GiB (``batching.estimate_sample_bytes``).
    channels_last: run the denoiser in channels-last layout (for CUDA tensor cores).
    compile: ``torch.compile`` the denoiser call (CUDA graphs on CUDA); pads every batch to one shape;
        compiling takes tens of seconds once per fold.
    reference_sampler: step with diffusers' ``scheduler.step`` (the plain path: a host sync per DDPM step)
        instead of the precomputed tensor step, which gives the same numbers.
    """

    max_batch_size: int = 16
    memory_budget_gb: float | None = None
    channels_last: bool = False
    compile: bool = False
    reference_sampler: bool = False

    def __post_init__(self) -> None:
        check_at_least("-max_batch_size", self.max_batch_size, 1)
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise PDDDPMUserError(f"-memory_budget_gb must be positive, got {self.memory_budget_gb}.")

    def to_dict(self) -> dict:
        return asdict(self)
