"""A dataset-free setting for device checks: nnU-Net-style plans, random-weight networks, random cases.

``paper``: the paper's denoiser size (128 base channels, a 2D 128x192 patch, self-attention at the two
coarsest stages, 16x24 and 8x12, one head; WMH's two image channels, FLAIR and T1). ``quick``: a tiny
network and patch for CPU tests. Weights are random (the layers that the denoiser zero-initialises get
small random values, so every layer computes something); Dice on these cases measures nothing, the
timings and FLOPs are real.
"""
from __future__ import annotations

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_pdddpm.networks.from_plans import build_attention_unet, build_denoiser

PRESETS = {
    # patch, plans' features, denoiser base / max features (None: the plan's), self-attention stages,
    # case shape (slices, y, x)
    "paper": dict(patch=[128, 192], features=[32, 64, 128, 256, 512], base=128, max=512, attention=2,
                  case=(1, 192, 288)),
    "quick": dict(patch=[32, 48], features=[8, 16, 32], base=None, max=None, attention=2, case=(1, 48, 72)),
    # a WMH-sized scan (200x240x56 at 1x1x3 mm) with the default PDDDPMTrainer (plan widths, attention at the
    # coarsest stage) on the 2d configuration nnU-Net plans for it: one 224x256 patch per slice
    "wmh": dict(patch=[224, 256], features=[32, 64, 128, 256, 512, 512], base=None, max=None, attention=1,
                case=(56, 200, 240)),
}
NUM_IMAGE_CHANNELS = 2
LABELS = {"background": 0, "lesion": 1}


def synthetic_plans(preset: str) -> tuple[PlansManager, ConfigurationManager, dict]:
    """Plans with one 2D configuration ``2d`` as nnU-Net's planner writes it, and a matching dataset.json."""
    p = PRESETS[preset]
    n = len(p["features"])
    arch = {
        "n_stages": n, "features_per_stage": p["features"], "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * n, "strides": [[1, 1]] + [[2, 2]] * (n - 1), "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    configuration = {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 12,
        "patch_size": p["patch"], "median_image_size_in_voxels": list(p["case"][1:]), "spacing": [1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"] * NUM_IMAGE_CHANNELS,
        "use_mask_for_norm": [False] * NUM_IMAGE_CHANNELS,
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True,
    }
    plans = {
        "dataset_name": "Dataset000_Synthetic", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": list(p["case"]), "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"2d": configuration},
        "experiment_planner_used": "synthetic", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }
    dataset_json = {"channel_names": {str(i): f"channel{i}" for i in range(NUM_IMAGE_CHANNELS)}, "labels": LABELS,
                    "numTraining": 0, "file_ending": ".nii.gz"}
    pm = PlansManager(plans)
    return pm, pm.get_configuration("2d"), dataset_json


def randomize_zero_layers_(network: nn.Module, seed: int = 0) -> nn.Module:
    """Give the layers that start at exactly zero (output conv, scale/shift, attention projection) small
    random weights, so a random-weight denoiser's output depends on every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return network


def synthetic_denoiser(preset: str, cm: ConfigurationManager, seed: int = 0) -> nn.Module:
    p = PRESETS[preset]
    torch.manual_seed(seed)
    net = build_denoiser(cm, NUM_IMAGE_CHANNELS, len(LABELS), base_features=p["base"], max_features=p["max"],
                         attention_stages=p["attention"], num_heads=1)
    return randomize_zero_layers_(net, seed).eval()


class SyntheticPreSegmenter:
    """A random-weight attention U-Net run by nnU-Net's predictor (sliding window, Gaussian, no mirroring)."""

    def __init__(self, pm: PlansManager, cm: ConfigurationManager, dataset_json: dict, device: torch.device,
                 seed: int = 0):
        torch.manual_seed(seed)
        net = build_attention_unet(cm, NUM_IMAGE_CHANNELS, len(LABELS), enable_deep_supervision=False)
        self.predictor = nnUNetPredictor(use_mirroring=False, device=device, allow_tqdm=False)
        self.predictor.manual_initialization(net.to(device).eval(), pm, cm, [net.state_dict()], dataset_json,
                                             "synthetic", None)

    def check_case(self, case_key: str | None) -> None:
        pass

    def probabilities(self, data: torch.Tensor, properties: dict, case_key: str | None) -> torch.Tensor:
        logits = self.predictor.predict_logits_from_preprocessed_data(data)
        return self.predictor.label_manager.apply_inference_nonlin(logits).float()


def synthetic_case(preset: str, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(image (C, slices, y, x) float32, label (slices, y, x) in {0, 1}): ellipses, brighter inside."""
    rng = np.random.default_rng(seed)
    shape = PRESETS[preset]["case"]
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    label = np.zeros(shape, np.uint8)
    for z in range(shape[0]):
        for _ in range(3):
            cy, cx = rng.uniform(0.2, 0.8) * shape[1], rng.uniform(0.2, 0.8) * shape[2]
            ry, rx = rng.uniform(0.05, 0.15) * shape[1], rng.uniform(0.05, 0.15) * shape[2]
            label[z][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    image = rng.normal(0, 1, (NUM_IMAGE_CHANNELS, *shape)) + 2 * label[None]
    return torch.from_numpy(image.astype(np.float32)), label
