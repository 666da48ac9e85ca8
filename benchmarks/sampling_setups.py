"""What ``benchmark_sampling`` runs on: a predictor with its pre-segmenter and a few preprocessed cases.

``dataset_setups``: trained models of an nnU-Net dataset (one setup per configuration), test images
preprocessed by nnU-Net, reference labels in the original geometry. ``synthetic_setup``: random-weight
networks from ``synthetic.py``, no files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from os.path import isfile, join
from typing import Callable

import numpy as np
import torch
from torch import nn

from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.evaluation.overlap import dice
from nnunet_pdddpm.inference.predictor import PDDDPMPredictor


@dataclass
class Case:
    key: str
    data: torch.Tensor  # preprocessed (C, *shape)
    properties: dict
    reference: np.ndarray  # label map in the geometry of to_segmentation's output


@dataclass
class Setup:
    """One configuration: ``to_segmentation(probabilities (K, *shape), case) -> label map`` for Dice."""

    name: str
    predictor: PDDDPMPredictor
    pre_segmenter: object
    pre_segmentation_network: nn.Module
    cases: list[Case]
    to_segmentation: Callable[[torch.Tensor, Case], np.ndarray]
    foreground_labels: list[int] = field(default_factory=lambda: [1])

    def dice(self, probabilities: torch.Tensor, case: Case) -> float:
        """Mean Dice over foreground labels (NaN labels, absent from both, are left out)."""
        seg = self.to_segmentation(probabilities, case)
        scores = [dice(case.reference == lab, seg == lab) for lab in self.foreground_labels]
        return float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan")


def synthetic_setup(preset: str, device: torch.device, num_cases: int, seed: int = 0) -> Setup:
    from benchmarks.synthetic import (
        SyntheticPreSegmenter,
        synthetic_case,
        synthetic_denoiser,
        synthetic_plans,
    )

    pm, cm, dataset_json = synthetic_plans(preset)
    predictor = PDDDPMPredictor(device=device, allow_tqdm=False, use_mirroring=False)
    settings = {"diffusion": DiffusionConfig().to_dict(),
                "sampling": {"t_prime": 300, "ensemble_size": 5, "sampler": "ddpm", "steps": None}}
    predictor.manual_initialization_pdddpm([synthetic_denoiser(preset, cm, seed)], pm, cm, dataset_json, settings,
                                           "synthetic", None)
    pre = SyntheticPreSegmenter(pm, cm, dataset_json, device, seed)
    predictor.configure(pre_segmentation=pre)
    cases = []
    for i in range(num_cases):
        image, label = synthetic_case(preset, seed + i)
        cases.append(Case(f"synthetic_{i:03d}", image, {}, label))
    return Setup(f"synthetic-{preset}", predictor, pre, pre.predictor.network, cases,
                 lambda probs, case: probs.argmax(0).numpy())


def dataset_setups(dataset: str, configurations: list[str], trainer: str, pre_trainer: str, plans: str,
                   folds: list | None, checkpoint: str, images: str, labels: str, num_cases: int,
                   device: torch.device) -> list[Setup]:
    """One :class:`Setup` per configuration; the first ``num_cases`` cases of ``images`` with a label in ``labels``."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_pdddpm.discovery import ensure_trainer_discovery
    from nnunet_pdddpm.inference.input_checks import input_cases
    from nnunet_pdddpm.inference.pre_segmentation import ModelPreSegmenter

    ensure_trainer_discovery()
    name = maybe_convert_to_dataset_name(dataset)
    setups = []
    for c in configurations:
        predictor = PDDDPMPredictor(device=device, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(get_output_folder(name, trainer, plans, c), folds, checkpoint)
        pre = ModelPreSegmenter(get_output_folder(name, pre_trainer, plans, c), folds, checkpoint, device)
        predictor.configure(pre_segmentation=pre)
        pm, cm, dj = predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
        ending = dj["file_ending"]
        preprocessor = cm.preprocessor_class(verbose=False)
        reader = pm.image_reader_writer_class()
        cases = []
        for key, files in input_cases(images, dj).items():
            ref = join(labels, key + ending)
            if not isfile(ref):
                continue
            data, _, props = preprocessor.run_case(files, None, pm, cm, dj)
            cases.append(Case(key, torch.from_numpy(np.asarray(data)).float(), props, reader.read_seg(ref)[0][0]))
            if len(cases) == num_cases:
                break
        if not cases:
            raise PDDDPMUserError(f"No case of {images} has a reference label in {labels}.")

        def to_segmentation(probs: torch.Tensor, case: Case, pm=pm, cm=cm, lm=predictor.label_manager) -> np.ndarray:
            return np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
                probs.clamp_min(1e-8).log(), pm, cm, lm, case.properties))

        setups.append(Setup(c, predictor, pre, pre.predictor.network, cases, to_segmentation,
                            list(predictor.label_manager.foreground_labels)))
    return setups
