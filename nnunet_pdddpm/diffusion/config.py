"""The diffusion settings a denoiser is trained with; saved in every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
OUTPUT_ACTIVATIONS = ("identity", "softmax")


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process and model parameterisation.

    ``num_train_timesteps`` is the paper's T. Timestep indices follow diffusers: index ``k`` in
    ``[0, T)`` has ``alpha_bar[k] = prod_{i<=k} (1 - beta_i)``, so the paper's step ``t`` (1..T)
    is index ``t - 1``. ``prediction_type`` is what the network outputs: the noise (``epsilon``,
    paper), the clean mask (``sample``) or the velocity (``v_prediction``).

    ``output_activation="softmax"`` (with ``sample`` only) reads the network's output as class logits: the
    clean-mask estimate is ``2 * softmax(logits) - 1``, so it always lies in the mask space (one-hot in
    [-1, 1], channels summing to 2 - K), and the trainer fits the logits with nnU-Net's Dice + cross-entropy
    loss instead of an MSE, which for sparse lesions is dominated by background voxels.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    output_activation: str = "identity"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {self.output_activation!r}")
        if self.output_activation == "softmax" and self.prediction_type != "sample":
            raise ValueError("output_activation 'softmax' needs prediction_type 'sample' (the network outputs the "
                             "clean mask's class logits)")
        if self.num_train_timesteps < 1:
            raise ValueError("num_train_timesteps must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
