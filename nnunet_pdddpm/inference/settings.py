"""Sampling settings of PD-DDPM inference, validated before any heavy work."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from nnunet_pdddpm.diffusion import SAMPLERS
from nnunet_pdddpm.errors import PDDDPMUserError

UNCERTAINTY_KINDS = ("variance", "entropy", "none")


@dataclass
class SamplingSettings:
    """How a case is sampled.

    t_prime: the paper's T' (reverse steps start at index t_prime - 1; 0 returns the pre-segmentation).
    ensemble_size: samples per case (paper: 5), dealt out over the folds; their mean is the probability map.
    ensemble_per_fold: every fold draws ``ensemble_size`` samples instead (F x N in all, as before 0.2).
    sampler / steps: ``ddpm`` (ancestral, every step unless ``steps``), ``ddim`` or ``dpm++`` with ``steps``.
    vanilla: the baseline: pure noise at T and the full reverse process (no pre-segmentation).
    per_class_uncertainty: also return one uncertainty map per class (variance of that class's probability,
        or with ``entropy`` its binary entropy); the scalar map stays the mean over classes (the default).
    soft_pre_segmentation: encode the pre-segmenter's probabilities as 2p - 1 instead of its argmax.
    max_batch_size: samples (patches x members) per denoiser call.
    memory_budget_gb: if set, the batch is the largest (up to max_batch_size) whose estimated activation
        memory fits this many GiB (``batching.estimate_sample_bytes``).
    reference_sampler: step with diffusers' ``scheduler.step`` (the plain path: a host sync per DDPM step)
        instead of the precomputed tensor step, which gives the same numbers.
    channels_last: run the denoiser in channels-last layout (for CUDA tensor cores).
    compile_denoiser: ``torch.compile`` the denoiser call (CUDA graphs on CUDA); pads every batch to one
        shape; compiling takes tens of seconds once per fold.
    """

    t_prime: int = 300
    ensemble_size: int = 5
    ensemble_per_fold: bool = False
    sampler: str = "ddpm"
    steps: int | None = None
    seed: int = 0
    vanilla: bool = False
    uncertainty: str = "variance"
    per_class_uncertainty: bool = False
    soft_pre_segmentation: bool = False
    max_batch_size: int = 16
    memory_budget_gb: float | None = None
    reference_sampler: bool = False
    channels_last: bool = False
    compile_denoiser: bool = False

    def effective_t_prime(self, num_train_timesteps: int) -> int:
        return num_train_timesteps if self.vanilla else self.t_prime

    def validate(self, num_train_timesteps: int) -> None:
        """Raise :class:`PDDDPMUserError` with one sentence for the first invalid setting."""
        if not 0 <= self.t_prime <= num_train_timesteps:
            raise PDDDPMUserError(f"--t_prime must be between 0 and T={num_train_timesteps}, got {self.t_prime}.")
        if self.ensemble_size < 1:
            raise PDDDPMUserError(f"--ensemble must be at least 1, got {self.ensemble_size}.")
        if self.sampler not in SAMPLERS:
            raise PDDDPMUserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}.")
        if self.steps is not None and self.steps < 1:
            raise PDDDPMUserError(f"--steps must be at least 1, got {self.steps}.")
        if self.uncertainty not in UNCERTAINTY_KINDS:
            raise PDDDPMUserError(f"--uncertainty must be one of {', '.join(UNCERTAINTY_KINDS)}.")
        if self.per_class_uncertainty and self.uncertainty == "none":
            raise PDDDPMUserError("--uncertainty_per_class needs an uncertainty: use --uncertainty variance or "
                                  "entropy.")
        if self.max_batch_size < 1:
            raise PDDDPMUserError(f"--max_batch_size must be at least 1, got {self.max_batch_size}.")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise PDDDPMUserError(f"--memory_budget_gb must be positive, got {self.memory_budget_gb}.")

    def to_dict(self) -> dict:
        return asdict(self)
