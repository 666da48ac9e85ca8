"""Where the pre-segmentation x_pre = f(I; psi) (paper eq. 3) comes from.

Either any trained nnU-Net model folder (run over the whole case with nnU-Net's own sliding
window; its checkpoints are read without running code unless ``trust_checkpoints``: see
``nnunet_pdddpm/checkpoints.py``), or a folder of ``--save_probabilities`` ``.npz`` files written by
``nnUNetv2_predict`` for any model (checked by ``probability_files.read_probabilities``). Both yield
softmax probabilities (K, *preprocessed shape) in the denoiser's preprocessed space. :class:`PreSegmentation`
names the interface every source shares (also the degraded and all-background ones of
``experiments/pre_segmentations.py``).
"""
from __future__ import annotations

import time
from os.path import isdir, isfile, join
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_pdddpm.discovery import ensure_trainer_discovery
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.nnunet_model import checked_folds, initialize_from_model_folder
from nnunet_pdddpm.probability_files import read_probabilities


@runtime_checkable
class PreSegmentation(Protocol):
    """A source of pre-segmentations: what ``PDDDPMPredictor.predict_case`` diffuses to T'."""

    def check_case(self, case_key: str | None) -> None:
        """Raise :class:`PDDDPMUserError` (one sentence) if this source has nothing for the case; before any work."""

    def probabilities(self, data: torch.Tensor, properties: dict, case_key: str | None) -> torch.Tensor:
        """Class probabilities (K, *shape) of the preprocessed case ``data`` (C, *shape), float32."""


class ModelPreSegmenter:
    """A trained nnU-Net model (any trainer) as pre-segmenter.

    Its checkpoints load with the safe unpickler and nnU-Net's allow-list; ``trust_checkpoints=True`` unpickles
    them in full, which lets a crafted file run code (only for files you trust).
    """

    def __init__(self, model_folder: str, folds: tuple | list | None, checkpoint_name: str, device: torch.device,
                 use_mirroring: bool = True, tile_step_size: float = 0.5, trust_checkpoints: bool = False):
        if not isdir(model_folder):
            raise PDDDPMUserError(f"Pre-segmentation model folder {model_folder} does not exist; train the "
                                  f"pre-segmenter first (nnUNetv2_train DATASET CONFIG FOLD) or check "
                                  f"-preseg_tr/-preseg_c/-preseg_p.")
        if not isfile(join(model_folder, "plans.json")) or not isfile(join(model_folder, "dataset.json")):
            raise PDDDPMUserError(f"{model_folder} is not an nnU-Net model folder "
                                  f"(plans.json or dataset.json missing).")
        ensure_trainer_discovery()
        self.model_folder = model_folder
        self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                         perform_everything_on_device=True, device=device, allow_tqdm=False)
        folds = checked_folds(model_folder, folds, checkpoint_name, "pre-segmenter")
        initialize_from_model_folder(self.predictor, model_folder, folds, checkpoint_name, trust_checkpoints)
        self.plans_manager: PlansManager = self.predictor.plans_manager
        self.configuration_manager: ConfigurationManager = self.predictor.configuration_manager
        self.dataset_json: dict = self.predictor.dataset_json

    def check_case(self, case_key: str | None) -> None:
        """Models can segment any case."""

    def probabilities(self, data: torch.Tensor, properties: dict, case_key: str | None) -> torch.Tensor:
        logits = self.predictor.predict_logits_from_preprocessed_data(data)
        return self.predictor.label_manager.apply_inference_nonlin(logits).float()


class NpzPreSegmentation:
    """Precomputed probabilities (``CASE.npz``, key ``probabilities``, original geometry) of any model."""

    def __init__(self, folder: str, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                 num_classes: int):
        if not isdir(folder):
            raise PDDDPMUserError(f"-preseg_probabilities folder {folder} does not exist.")
        self.folder = folder
        self.plans_manager = plans_manager
        self.configuration_manager = configuration_manager
        self.num_classes = num_classes

    def file_for(self, case_key: str | None) -> str:
        return join(self.folder, f"{case_key}.npz")

    def check_case(self, case_key: str | None) -> None:
        if case_key is None or not isfile(self.file_for(case_key)):
            raise PDDDPMUserError(f"No pre-segmentation probabilities for case {case_key} in {self.folder} (expected "
                                  f"{case_key}.npz from nnUNetv2_predict --save_probabilities).")

    def probabilities(self, data: torch.Tensor, properties: dict, case_key: str | None) -> torch.Tensor:
        """Load, transpose, crop and resample the stored probabilities exactly as nnU-Net preprocesses images."""
        self.check_case(case_key)
        probs = read_probabilities(self.file_for(case_key), self.num_classes)
        if tuple(probs.shape[1:]) != tuple(properties["shape_before_cropping"][i]
                                          for i in self.plans_manager.transpose_backward):
            raise PDDDPMUserError(f"{self.file_for(case_key)} has shape {probs.shape[1:]}, which does not match the "
                                  f"image of case {case_key}; use probabilities predicted for these images.")
        tf = self.plans_manager.transpose_forward
        probs = probs.transpose([0, *[i + 1 for i in tf]])
        bbox = properties["bbox_used_for_cropping"]
        probs = probs[(slice(None), *[slice(lo, hi) for lo, hi in bbox])]
        spacing_transposed = [properties["spacing"][i] for i in tf]
        target_spacing = self.configuration_manager.spacing
        if len(target_spacing) < len(spacing_transposed):
            target_spacing = [spacing_transposed[0], *target_spacing]
        target_shape = tuple(data.shape[1:])
        if tuple(probs.shape[1:]) != target_shape:
            probs = self.configuration_manager.resampling_fn_probabilities(probs, target_shape, spacing_transposed,
                                                                           target_spacing)
        probs = torch.as_tensor(np.asarray(probs), dtype=torch.float32)
        return probs / probs.sum(0, keepdim=True).clamp_min(1e-8)


def check_compatible(denoiser_pm: PlansManager, denoiser_cm: ConfigurationManager, denoiser_dj: dict,
                     other_pm: PlansManager, other_cm: ConfigurationManager, other_dj: dict, what: str) -> None:
    """Raise one sentence if ``what`` cannot serve as pre-segmenter for the denoiser (same data, labels, geometry)."""
    problems = []
    if denoiser_pm.dataset_name != other_pm.dataset_name:
        problems.append(f"dataset {other_pm.dataset_name} vs {denoiser_pm.dataset_name}")
    if _labels(denoiser_dj) != _labels(other_dj):
        problems.append(f"labels {_labels(other_dj)} vs {_labels(denoiser_dj)}")
    if _channels(denoiser_dj) != _channels(other_dj):
        problems.append(f"channels {_channels(other_dj)} vs {_channels(denoiser_dj)}")
    if list(denoiser_pm.transpose_forward) != list(other_pm.transpose_forward):
        problems.append("axis order (transpose_forward)")
    if len(denoiser_cm.spacing) != len(other_cm.spacing) or not np.allclose(denoiser_cm.spacing, other_cm.spacing):
        problems.append(f"target spacing {other_cm.spacing} vs {denoiser_cm.spacing}")
    if list(denoiser_cm.normalization_schemes) != list(other_cm.normalization_schemes):
        problems.append("intensity normalisation")
    if problems:
        raise PDDDPMUserError(f"The {what} does not match the denoiser ({'; '.join(problems)}); use a "
                              f"pre-segmenter trained on the same dataset with a configuration of the same "
                              f"spacing and preprocessing.")


def _labels(dataset_json: dict) -> dict:
    return {str(k): v for k, v in dataset_json["labels"].items()}


def _channels(dataset_json: dict) -> dict:
    return {str(k): v for k, v in dataset_json.get("channel_names", dataset_json.get("modality", {})).items()}


class CachedPreSegmentation:
    """Wraps a pre-segmenter (``ModelPreSegmenter`` or ``NpzPreSegmentation``); runs it once per case.

    ``seconds[case]`` is the time of that one run; ``nfe[case]`` its network evaluations as given by
    ``count_nfe(data)`` (0 for precomputed probabilities). A case without a key is run every time and not kept:
    two such cases would otherwise share the first one's probabilities.
    """

    def __init__(self, source: PreSegmentation, count_nfe: Callable[[torch.Tensor], int] | None = None,
                 name: str = "pre-segmenter"):
        self.source = source
        self.name = name
        self.count_nfe = count_nfe
        self.cache: dict[str, torch.Tensor] = {}
        self.seconds: dict[str, float] = {}
        self.nfe: dict[str, int] = {}

    def check_case(self, case_key: str | None) -> None:
        self.source.check_case(case_key)

    def probabilities(self, data: torch.Tensor, properties: dict, case_key: str | None) -> torch.Tensor:
        if case_key is None:
            return self.source.probabilities(data, properties, case_key).float().cpu()
        if case_key not in self.cache:
            start = time.perf_counter()
            self.cache[case_key] = self.source.probabilities(data, properties, case_key).float().cpu()
            self.seconds[case_key] = time.perf_counter() - start
            self.nfe[case_key] = 0 if self.count_nfe is None else int(self.count_nfe(data))
        return self.cache[case_key]
