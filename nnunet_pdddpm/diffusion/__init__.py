"""Diffusion core: schedule, mask encoding, samplers. Knows nothing about nnU-Net."""
from nnunet_pdddpm.diffusion.config import OUTPUT_ACTIVATIONS, PREDICTION_TYPES, DiffusionConfig
from nnunet_pdddpm.diffusion.encoding import (
    decode_to_probabilities,
    encode_labels,
    encode_pre_segmentation,
    encode_probabilities,
    hard_onehot,
)
from nnunet_pdddpm.diffusion.samplers import SAMPLERS, reverse_process, sampling_timesteps
from nnunet_pdddpm.diffusion.schedule import (
    diffuse,
    make_ddpm_scheduler,
    model_output,
    predict_x0,
    start_index,
    training_target,
)

__all__ = [
    "OUTPUT_ACTIVATIONS",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "DiffusionConfig",
    "decode_to_probabilities",
    "diffuse",
    "encode_labels",
    "encode_pre_segmentation",
    "encode_probabilities",
    "hard_onehot",
    "make_ddpm_scheduler",
    "model_output",
    "predict_x0",
    "reverse_process",
    "sampling_timesteps",
    "start_index",
    "training_target",
]
