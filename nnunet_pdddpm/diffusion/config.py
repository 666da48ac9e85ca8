"""The diffusion settings a denoiser is trained with; saved in every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process and model parameterisation.

    ``num_train_timesteps`` is the paper's T. Timestep indices follow diffusers: index ``k`` in
    ``[0, T)`` has ``alpha_bar[k] = prod_{i<=k} (1 - beta_i)``, so the paper's step ``t`` (1..T)
    is index ``t - 1``. ``prediction_type`` is what the network outputs: the noise (``epsilon``,
    paper), the clean mask (``sample``) or the velocity (``v_prediction``).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.num_train_timesteps < 1:
            raise ValueError("num_train_timesteps must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
