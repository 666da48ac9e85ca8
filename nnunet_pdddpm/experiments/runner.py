"""Shared machinery of the paper's experiments: two trained models, one folder of test images, many settings.

The denoiser (a ``PDDDPMTrainer`` model folder) and the pre-segmenter (any nnU-Net model folder)
are loaded once; every test case is preprocessed once with nnU-Net's own preprocessor and its
pre-segmentation computed once (:class:`CachedPreSegmentation`), so a sweep over T' or ensemble
sizes only pays for sampling. Each setting is written like ``nnunet_pdddpm_predict`` writes it
(``OUTDIR/predictions/<setting>/CASE<ending>`` and ``.../uncertainty/CASE_uncertainty<ending>``)
and evaluated with :func:`nnunet_pdddpm.evaluation.evaluate_folders` against the references.

Per-case network evaluations and seconds are kept in ``pdddpm_cases.json`` next to the
segmentations, which also lets ``resume=True`` skip finished cases.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nnunet_pdddpm.discovery import ensure_trainer_discovery
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.evaluation import evaluate_folders
from nnunet_pdddpm.inference.ensemble_sampling import CaseResult
from nnunet_pdddpm.inference.export import export_case
from nnunet_pdddpm.inference.input_checks import check_input_folder
from nnunet_pdddpm.inference.pre_segmentation import CachedPreSegmentation, ModelPreSegmenter
from nnunet_pdddpm.inference.predictor import PDDDPMPredictor
from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings
from nnunet_pdddpm.io_utils import write_json_atomic
from nnunet_pdddpm.output_names import UNCERTAINTY_FOLDER, UNCERTAINTY_SUFFIX

CASES_FILE = "pdddpm_cases.json"
logger = logging.getLogger(__name__)
#: metrics of a setting, as means over cases and foreground labels
METRICS = ("dice", "hd95", "jaccard", "lesion_f1", "lesion_recall", "lesion_precision", "avd", "mean_uncertainty",
           "uncertainty_auroc")


@dataclass(frozen=True)
class ModelSelection:
    """Which trained models an experiment uses (folders as ``nnUNet_results/<dataset>/<trainer>__<plans>__<c>``).

    ``trust_checkpoints`` unpickles the pre-segmenter's checkpoints in full, which lets them run code
    (``--trust_checkpoints``); by default they load without (``nnunet_pdddpm/checkpoints.py``).
    """

    denoiser_folder: str
    pre_segmenter_folder: str
    folds: tuple | None = None
    checkpoint: str = "checkpoint_final.pth"
    pre_segmenter_checkpoint: str = "checkpoint_final.pth"
    device: str = "cpu"
    use_mirroring: bool = True
    tile_step_size: float = 0.5
    trust_checkpoints: bool = False
    pre_segmenter_folds: tuple | None = None  # None: the same as ``folds``
    performance: PerformanceSettings = PerformanceSettings()


@dataclass
class SettingRun:
    """One evaluated setting: where its files are, its cost per case, and its mean metrics."""

    name: str
    folder: Path
    uncertainty_folder: Path | None
    nfe_per_case: float
    seconds_per_case: float
    metrics: dict[str, float] = field(default_factory=dict)


class ExperimentRunner:
    def __init__(self, models: ModelSelection, images: str | os.PathLike, reference: str | os.PathLike,
                 output: str | os.PathLike, verbose: bool = True):
        ensure_trainer_discovery()
        for flag, folder in (("-i", images), ("-ref", reference)):
            if not Path(folder).is_dir():
                raise PDDDPMUserError(f"{flag} {folder} is not an existing folder.")
        self.models = models
        self.reference = Path(reference)
        self.output = Path(output)
        self.verbose = verbose
        self.predictor = PDDDPMPredictor(tile_step_size=models.tile_step_size, use_mirroring=models.use_mirroring,
                                         device=torch.device(models.device), allow_tqdm=verbose,
                                         performance=models.performance)
        self.predictor.initialize_from_trained_model_folder(models.denoiser_folder, models.folds, models.checkpoint)
        self.defaults: SamplingSettings = self.predictor.sampling
        self.file_ending = self.predictor.dataset_json["file_ending"]
        self.case_files = self._list_cases(Path(images))
        self._preprocessed: dict[str, tuple[torch.Tensor, dict]] = {}
        self._pre_segmentations: dict[str, CachedPreSegmentation] = {}

    # ---------------------------------------------------------------- inputs
    def _list_cases(self, images: Path) -> dict[str, list[str]]:
        """The test cases' channel files, checked like ``nnunet_pdddpm_predict``'s inputs."""
        p = self.predictor
        cases = check_input_folder(str(images), p.dataset_json, len(p.configuration_manager.patch_size))
        if not cases:
            raise PDDDPMUserError(f"-i {images} holds no CASE_0000{self.file_ending} images.")
        missing = [c for c in cases if not (self.reference / f"{c}{self.file_ending}").is_file()]
        if missing:
            raise PDDDPMUserError(f"-ref {self.reference} has no reference for {', '.join(missing[:5])}; give the "
                                  f"label folder of exactly these test images.")
        return cases

    @property
    def cases(self) -> list[str]:
        return sorted(self.case_files)

    def case_data(self, case: str) -> tuple[torch.Tensor, dict]:
        """Preprocessed image (C, *shape) and nnU-Net's properties of a case (computed once)."""
        if case not in self._preprocessed:
            p = self.predictor
            preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
            data, _, properties = preprocessor.run_case(self.case_files[case], None, p.plans_manager,
                                                        p.configuration_manager, p.dataset_json)
            self._preprocessed[case] = (torch.from_numpy(np.asarray(data)).float(), properties)
        return self._preprocessed[case]

    def settings(self, **changes) -> SamplingSettings:
        """The denoiser trainer's sampling settings with ``changes`` applied (``SamplingSettings.with_overrides``),
        checked against the denoiser."""
        settings = self.defaults.with_overrides(**changes)
        self.predictor.check_settings(settings)
        return settings

    def pre_segmentation(self, checkpoint: str | None = None) -> CachedPreSegmentation:
        """The pre-segmenter (at ``checkpoint``, default the selected one), loaded once and cached per case."""
        checkpoint = checkpoint or self.models.pre_segmenter_checkpoint
        if checkpoint not in self._pre_segmentations:
            m = self.models
            folds = m.folds if m.pre_segmenter_folds is None else m.pre_segmenter_folds
            model = ModelPreSegmenter(m.pre_segmenter_folder, folds, checkpoint, torch.device(m.device),
                                      use_mirroring=m.use_mirroring, tile_step_size=m.tile_step_size,
                                      trust_checkpoints=m.trust_checkpoints)
            self.predictor.check_pre_segmentation(model)
            self._pre_segmentations[checkpoint] = CachedPreSegmentation(
                model, lambda data: _pre_segmenter_nfe(model, data), name=checkpoint)
        return self._pre_segmentations[checkpoint]

    # ---------------------------------------------------------------- sampling and export
    def sample(self, case: str, settings: SamplingSettings,
               pre_segmentation: CachedPreSegmentation | None = None) -> tuple[CaseResult, int, float]:
        """One case with ``settings``: (result, network evaluations, seconds), pre-segmentation included."""
        data, properties = self.case_data(case)
        nfe, seconds = 0, 0.0
        if not settings.vanilla:
            if pre_segmentation is None:
                raise ValueError("PD-DDPM settings need a pre-segmentation")
            pre_segmentation.probabilities(data, properties, case)
            nfe, seconds = pre_segmentation.nfe[case], pre_segmentation.seconds[case]
        start = time.perf_counter()
        result = self.predictor.predict_case(data, properties, case, settings, pre_segmentation)
        return result, nfe + result.nfe, seconds + time.perf_counter() - start

    def folder(self, name: str) -> Path:
        return self.output / "predictions" / name

    def export(self, name: str, case: str, probabilities: torch.Tensor, uncertainty: torch.Tensor | None,
               nfe: int, seconds: float, **extra) -> None:
        """Write a case's segmentation (and uncertainty map) in the input geometry; record its cost (and ``extra``)."""
        folder = self.folder(name)
        _, properties = self.case_data(case)
        unc_file = None
        if uncertainty is not None:
            unc_file = str(folder / UNCERTAINTY_FOLDER / f"{case}{UNCERTAINTY_SUFFIX}{self.file_ending}")
            os.makedirs(os.path.dirname(unc_file), exist_ok=True)
        p = self.predictor
        export_case(probabilities, uncertainty, properties, p.plans_manager, p.configuration_manager, p.dataset_json,
                    str(folder / case), False, unc_file)
        log = _read_cases(folder)
        log[case] = {"nfe": int(nfe), "seconds": float(seconds), "uncertainty": uncertainty is not None, **extra}
        write_json_atomic(log, folder / CASES_FILE)

    def run_setting(self, name: str, settings: SamplingSettings, pre_segmentation=None,
                    resume: bool = False) -> SettingRun:
        """Sample every case with ``settings`` into ``predictions/<name>`` and evaluate; ``resume`` skips done cases."""
        todo = self.pending_cases(name, settings) if resume else self.cases
        done = len(self.cases) - len(todo)
        self._say(f"{name}: {len(todo)} case(s) to sample" + (f", {done} already done" if done else ""))
        for i, case in enumerate(todo, 1):
            result, nfe, seconds = self.sample(case, settings, pre_segmentation)
            pre = {} if settings.vanilla else {"pre_segmentation_nfe": pre_segmentation.nfe[case],
                                               "pre_segmentation_seconds": pre_segmentation.seconds[case]}
            self.export(name, case, result.probabilities, result.uncertainty, nfe, seconds, **pre)
            self._say(f"  {name}: {case} ({i}/{len(todo)}) {nfe} network evaluations, {seconds:.1f} s")
        return self.evaluate(name)

    def run_pre_segmentation(self, name: str, pre_segmentation) -> SettingRun:
        """The pre-segmentation itself as a setting (its probabilities' argmax, exported as nnU-Net does)."""
        for case in self.cases:
            data, properties = self.case_data(case)
            probs = pre_segmentation.probabilities(data, properties, case)
            self.export(name, case, probs, None, pre_segmentation.nfe[case], pre_segmentation.seconds[case])
        return self.evaluate(name)

    def pending_cases(self, name: str, settings: SamplingSettings) -> list[str]:
        """Cases of ``predictions/<name>`` without a recorded segmentation (and uncertainty map, if asked for)."""
        folder = self.folder(name)
        log = _read_cases(folder)
        unc = folder / UNCERTAINTY_FOLDER
        with_uncertainty = settings.uncertainty != "none"

        def done(case: str) -> bool:
            return case in log and (folder / f"{case}{self.file_ending}").is_file() and (
                not with_uncertainty or (unc / f"{case}{UNCERTAINTY_SUFFIX}{self.file_ending}").is_file())

        return [c for c in self.cases if not done(c)]

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, name: str) -> SettingRun:
        """Mean metrics over cases and foreground labels of ``predictions/<name>`` against the references."""
        folder = self.folder(name)
        log = _read_cases(folder)
        with_unc = bool(log) and all(log.get(c, {}).get("uncertainty", False) for c in self.cases)
        unc_folder = folder / UNCERTAINTY_FOLDER if with_unc else None
        summary = evaluate_folders(self.reference, folder, unc_dir=unc_folder,
                                   labels=self.predictor.label_manager.foreground_labels,
                                   file_ending=self.file_ending, show_progress=False)
        write_json_atomic(summary, self.output / "evaluation" / f"{name}.json")
        metrics = {}
        for metric in METRICS:
            values = [m[metric] for m in summary["mean"].values() if metric in m]
            finite = [v for v in values if not math.isnan(v)]
            if values:
                metrics[metric] = float(np.mean(finite)) if finite else float("nan")
        cost = [log[c] for c in self.cases if c in log]
        return SettingRun(name, folder, unc_folder, float(np.mean([c["nfe"] for c in cost])) if cost else math.nan,
                          float(np.mean([c["seconds"] for c in cost])) if cost else math.nan, metrics)

    def _say(self, text: str) -> None:
        if self.verbose:
            logger.info(text)


def _read_cases(folder: Path) -> dict:
    path = folder / CASES_FILE
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def _pre_segmenter_nfe(model: ModelPreSegmenter, data: torch.Tensor) -> int:
    """Network evaluations of nnU-Net's sliding window on ``data`` (C, *shape): patches x mirrorings x folds."""
    p = model.predictor
    patch = list(p.configuration_manager.patch_size)
    shape = list(data.shape[1:])
    lead = len(shape) - len(patch)
    padded = shape[:lead] + [max(s, q) for s, q in zip(shape[lead:], patch)]
    mirrors = 2 ** len(p.allowed_mirroring_axes) if p.use_mirroring and p.allowed_mirroring_axes else 1
    return len(p._internal_get_sliding_window_slicers(tuple(padded))) * mirrors * len(p.list_of_parameters)
