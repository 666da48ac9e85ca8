"""``PDDDPMPredictor``: nnU-Net's predictor with PD-DDPM sampling in place of one forward pass per patch.

Life cycle as in nnU-Net (``initialize_from_trained_model_folder``, ``predict_from_files``,
``predict_single_npy_array``); nnU-Net's preprocessing, sliding-window slicers, Gaussian weights,
resampling and export are reused.

:meth:`PDDDPMPredictor.predict_case` is a function of its arguments: the sampling settings and the
pre-segmentation (any :class:`PreSegmentation`) are passed in, and everything measured (probabilities,
uncertainty, NFE) comes back in a :class:`CaseResult`. nnU-Net's file-based calls (``predict_from_files``)
use the settings and pre-segmentation given once to :meth:`PDDDPMPredictor.configure`. nnU-Net's other
public calls sample the same way or refuse with the call to use instead (``nnunet_entry_points.py``).
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from os.path import basename, isfile, join

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn
from tqdm import tqdm

from nnunet_pdddpm.diffusion import DiffusionConfig, encode_pre_segmentation
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.image_integrity import image_file_problem, read_image_header
from nnunet_pdddpm.inference.compiled import DenoiserCache
from nnunet_pdddpm.inference.denoiser_model import DenoiserModel, denoiser_model, load_denoiser_model
from nnunet_pdddpm.inference.ensemble_sampling import (
    CaseResult,
    CaseWindows,
    SamplingRun,
    number_of_evaluations,
    sample_case,
)
from nnunet_pdddpm.inference.export import (
    class_uncertainty_files,
    export_case,
    uncertainty_to_original_geometry,
)
from nnunet_pdddpm.inference.fusion import fuse_with_pre_segmentation
from nnunet_pdddpm.inference.input_checks import check_cases, input_cases
from nnunet_pdddpm.inference.nnunet_entry_points import NNUNetEntryPoints
from nnunet_pdddpm.inference.pre_segmentation import (
    ModelPreSegmenter,
    PreSegmentation,
    check_compatible,
)
from nnunet_pdddpm.inference.scores_file import record_case_scores
from nnunet_pdddpm.inference.settings import DenoiserLimits, PerformanceSettings, SamplingSettings, check_at_least
from nnunet_pdddpm.inference.uncertainty import binary_entropy, case_scores, predictive_entropy
from nnunet_pdddpm.output_names import CASE_SCORES_FILE, UNCERTAINTY_FOLDER, UNCERTAINTY_SUFFIX
from nnunet_pdddpm.precision import autocast
from nnunet_pdddpm.probability_files import probability_file_problem

logger = logging.getLogger(__name__)
MISSING = "it is missing"


def _wait_for_exports(pending: set[Future], at_most: int) -> set[Future]:
    """Wait until at most ``at_most`` of the ``pending`` exports run or wait; re-raise the first failure."""
    while True:
        for future in [f for f in pending if f.done()]:
            pending.discard(future)
            future.result()
        if len(pending) <= at_most:
            return pending
        wait(pending, return_when=FIRST_COMPLETED)


def _cropped(result: CaseResult, final: torch.Tensor, revert, uncertainty_kind: str) -> CaseResult:
    """The case's result with the sliding-window padding removed (``revert`` from ``pad_nd_image``), on the CPU,
    and its scores computed on what remains."""
    crop, per_class_crop = tuple(revert[1:]), (slice(None), *revert[1:])
    unc = None if result.uncertainty is None else result.uncertainty[crop].cpu()
    per_class = None if result.class_uncertainty is None else result.class_uncertainty[per_class_crop].cpu()
    scores = None if result.member_foreground is None else case_scores(
        result.member_foreground[per_class_crop].cpu(), result.probabilities[per_class_crop].cpu(), unc,
        uncertainty_kind)
    return CaseResult(final[per_class_crop].cpu(), unc, per_class, result.nfe, scores=scores)


class PDDDPMPredictor(NNUNetEntryPoints, nnUNetPredictor):
    #: Finished cases that may queue for an export thread while the next case is sampled (nnU-Net: 2 per worker
    #: pool); each holds its probabilities and uncertainty maps in memory.
    max_cases_waiting_for_export = 1

    def __init__(self, tile_step_size: float = 0.5, use_gaussian: bool = True, use_mirroring: bool = True,
                 perform_everything_on_device: bool = True, device: torch.device = torch.device("cuda"),
                 verbose: bool = False, verbose_preprocessing: bool = False, allow_tqdm: bool = True,
                 sampling: SamplingSettings | None = None, performance: PerformanceSettings = PerformanceSettings(),
                 uncertainty_folder: str | None = None):
        """``sampling=None`` takes T', ensemble size, sampler and steps from the model (its checkpoint's trainer
        settings, at the swept T').

        ``use_mirroring`` applies to the pre-segmenter (nnU-Net's test-time mirroring); the denoiser's
        samples are already an ensemble. ``uncertainty_folder``: where ``predict_from_files`` writes the
        uncertainty maps (default: ``uncertainty/`` in the output folder).
        """
        super().__init__(tile_step_size, use_gaussian, use_mirroring, perform_everything_on_device, device, verbose,
                         verbose_preprocessing, allow_tqdm)
        self.sampling = sampling
        self.settings_given = sampling is not None
        self.performance = performance
        self.pre_segmentation: PreSegmentation | None = None
        self.model: DenoiserModel | None = None
        self.uncertainty_folder = uncertainty_folder
        self.denoiser_cache = DenoiserCache()  # compiled denoisers survive from case to case

    # ---------------------------------------------------------------- set-up
    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds: tuple | list | None = None,
                                             checkpoint_name: str = "checkpoint_final.pth") -> None:
        """Load a ``PDDDPMTrainer`` model folder (:func:`load_denoiser_model`: ``weights_only=True``, EMA weights).

        Without explicit sampling settings, T' is the one the final validation's sweep chose for these folds
        (``fold_X/pdddpm_t_prime.json``) when it exists, else the trainer's ``t_prime``; ``t_prime_source``
        says which.
        """
        self.use_model(load_denoiser_model(model_training_output_dir, use_folds, checkpoint_name))

    def manual_initialization_pdddpm(self, networks: list[nn.Module], plans_manager: PlansManager,
                                     configuration_manager, dataset_json: dict, pdddpm_settings: dict,
                                     trainer_name: str, inference_allowed_mirroring_axes) -> None:
        """Initialise from in-memory denoisers (one per fold) and the checkpoint's ``pdddpm`` settings."""
        self.use_model(denoiser_model(networks, plans_manager, configuration_manager, dataset_json, pdddpm_settings,
                                      trainer_name, inference_allowed_mirroring_axes))

    def use_model(self, model: DenoiserModel) -> None:
        """Sample with ``model`` (its networks moved to this predictor's device); nnU-Net's attributes (plans,
        configuration, labels, mirroring axes) are the model's."""
        self.model = replace(model, networks=tuple(net.to(self.device).eval() for net in model.networks))
        self.plans_manager = model.plans_manager
        self.configuration_manager = model.configuration_manager
        self.dataset_json = model.dataset_json
        self.trainer_name = model.trainer_name
        self.allowed_mirroring_axes = model.allowed_mirroring_axes
        self.label_manager = model.label_manager
        self.network = self.model.networks[0]
        self.list_of_parameters = []
        self.sampling = model.sampling if self.sampling is None else self.sampling
        self.check_settings(self.sampling)

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        return () if self.model is None else self.model.networks

    @property
    def diffusion_config(self) -> DiffusionConfig | None:
        return None if self.model is None else self.model.diffusion_config

    @property
    def trained_timesteps(self) -> int:
        return self.model.trained_timesteps

    @property
    def t_prime_source(self) -> str:
        """Where the predictor's T' came from: the model's (sweep file or trainer) unless settings were given to the
        constructor."""
        return "the sampling settings" if self.settings_given else self.model.t_prime_source

    @property
    def limits(self) -> DenoiserLimits:
        """What this denoiser allows (T, trained timesteps, folds, classes): what settings are resolved against."""
        return self.model.limits

    def check_settings(self, settings: SamplingSettings) -> None:
        """Raise :class:`PDDDPMUserError` (one sentence) for settings invalid for this denoiser, before any work
        (:meth:`SamplingSettings.resolve`, where T' came from as the T' source)."""
        own = settings.t_prime == self.sampling.t_prime
        settings.resolve(self.limits, self.t_prime_source if own else "-t_prime")

    def configure(self, sampling: SamplingSettings | None = None,
                  pre_segmentation: PreSegmentation | None = None) -> None:
        """The sampling settings and pre-segmentation nnU-Net's file-based calls (``predict_from_files``,
        ``predict_single_npy_array``) use; both are checked against the denoiser now (None keeps the current)."""
        if sampling is not None:
            self.check_settings(sampling)
            self.sampling = sampling
        if pre_segmentation is not None:
            self.check_pre_segmentation(pre_segmentation)
            self.pre_segmentation = pre_segmentation

    def check_pre_segmentation(self, pre_segmentation: PreSegmentation) -> None:
        """One sentence if a pre-segmentation model cannot serve this denoiser (dataset, labels, geometry)."""
        if isinstance(pre_segmentation, ModelPreSegmenter):
            check_compatible(self.plans_manager, self.configuration_manager, self.dataset_json,
                             pre_segmentation.plans_manager, pre_segmentation.configuration_manager,
                             pre_segmentation.dataset_json, "pre-segmentation model")

    # ---------------------------------------------------------------- one case
    @torch.inference_mode()
    def predict_case(self, data: torch.Tensor, properties: dict, case_key: str | None,
                     sampling: SamplingSettings | None = None, pre_segmentation: PreSegmentation | None = None,
                     performance: PerformanceSettings | None = None) -> CaseResult:
        """Sample a preprocessed case (C, *shape) -> probabilities (K, *shape), uncertainty (*shape) or None, NFE,
        case scores (with ``sampling.case_scores``).

        ``sampling``, ``pre_segmentation`` and ``performance`` default to those of :meth:`configure` and the
        constructor; the result depends on nothing else (and on ``sampling.seed``, not on batch layout).
        With ``-preseg_weight``, ``-confidence_gate`` or ``--lesion_gate`` the probabilities are fused with the
        pre-segmenter's after aggregation over patches (``fusion.py``); the ``entropy`` map (and the scores' mean
        uncertainty) is then that of the fused probabilities, the other maps and the pairwise Dice stay the ensemble's.
        """
        sampling = self.sampling if sampling is None else sampling
        pre_segmentation = self.pre_segmentation if pre_segmentation is None else pre_segmentation
        performance = self.performance if performance is None else performance
        self.check_settings(sampling)
        if not torch.isfinite(data).all():
            raise PDDDPMUserError(f"Case {case_key} has NaN or infinite voxels after preprocessing; fix the input "
                                  f"images (replace non-finite values) and predict again.")
        if not sampling.vanilla and pre_segmentation is None:
            raise PDDDPMUserError("No pre-segmentation: pass -preseg_tr/-preseg_c (a trained nnU-Net model) or "
                                  "-preseg_probabilities, or use --vanilla.")
        patch = tuple(self.configuration_manager.patch_size)
        results = self.device if self.perform_everything_on_device else torch.device("cpu")
        pre_probabilities = x0_pre = None
        if not sampling.vanilla:
            pre_probabilities, x0_pre = self._encoded_start(pre_segmentation, data, properties, case_key, sampling)
        padded, revert = pad_nd_image(data.to(self.device, torch.float32), patch, "constant", {"value": 0}, True, None)
        slicers = self._internal_get_sliding_window_slicers(padded.shape[1:])
        gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=results,
                                    dtype=torch.float32) if self.use_gaussian else torch.ones(patch, device=results)
        mirror_axes = tuple(self.allowed_mirroring_axes or ()) if sampling.mirrored_members else ()
        result = self._sample_with_oom_fallback(CaseWindows(padded, x0_pre, slicers, gaussian, mirror_axes),
                                                case_key, results, sampling, performance)
        final = result.probabilities
        if sampling.fuses_pre_segmentation:
            final = fuse_with_pre_segmentation(final, pre_probabilities.to(results), sampling.pre_segmentation_weight,
                                               sampling.confidence_gate, sampling.lesion_gate)
            if sampling.uncertainty == "entropy":  # the entropy of what is delivered (fusion.py)
                per_class = None if result.class_uncertainty is None else binary_entropy(final)
                result = replace(result, uncertainty=predictive_entropy(final), class_uncertainty=per_class)
        return _cropped(result, final, revert, sampling.uncertainty)

    def _encoded_start(self, pre_segmentation: PreSegmentation, data: torch.Tensor, properties: dict,
                       case_key: str | None, sampling: SamplingSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-segmenter's probabilities (K, *padded) and the x0 they encode to, padded like the image
        (the padding is background: ``encode_pre_segmentation``)."""
        patch = tuple(self.configuration_manager.patch_size)
        probs = pre_segmentation.probabilities(data, properties, case_key).to(self.device)
        probs, _ = pad_nd_image(probs, patch, "constant", {"value": 0}, True, None)
        return probs, encode_pre_segmentation(probs[None], sampling.soft_pre_segmentation)[0]

    def _sample_with_oom_fallback(self, case: CaseWindows, case_key: str | None, results: torch.device,
                                  sampling: SamplingSettings, performance: PerformanceSettings) -> CaseResult:
        """Sample; on device out-of-memory retry with half the batch (results do not depend on the batch layout)."""
        t_prime = sampling.effective_t_prime(self.diffusion_config.num_train_timesteps)
        nfe = number_of_evaluations(len(case.slicers), len(self.networks), sampling, t_prime)
        device_autocast = functools.partial(autocast, self.device)
        while True:
            try:
                with tqdm(total=nfe, desc=f"sampling {case_key or ''}".strip(), unit="eval",
                          leave=False, disable=not self.allow_tqdm) as bar:
                    denoisers = self.denoiser_cache.get(self.networks, device_autocast, performance.channels_last,
                                                        performance.compile)
                    run = SamplingRun(performance, results, device_autocast, denoisers, bar.update)
                    return sample_case(self.model, case, sampling, case_key, run)
            except torch.OutOfMemoryError:
                if performance.max_batch_size == 1:
                    raise PDDDPMUserError(f"Case {case_key} does not fit in device memory even one sample at a "
                                          f"time; use -device cpu or a configuration with a smaller patch.") from None
                performance = replace(performance, max_batch_size=max(1, performance.max_batch_size // 2),
                                      memory_budget_gb=None)
                warnings.warn(f"Out of device memory while sampling {case_key}; retrying with "
                              f"-max_batch_size {performance.max_batch_size}.", stacklevel=2)
                empty_cache(self.device)

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net's contract: "logits" (K, *shape); here log ensemble-mean probabilities (softmax gives them back)."""
        return self.predict_case(data, {}, None).probabilities.clamp_min(1e-8).log()

    # ---------------------------------------------------------------- many cases
    def _manage_input_and_output_lists(self, list_of_lists_or_source_folder,
                                       output_folder_or_list_of_truncated_output_files,
                                       folder_with_segs_from_prev_stage=None, overwrite=True, part_id=0, num_parts=1,
                                       save_probabilities=False):
        """nnU-Net's bookkeeping, plus: inputs are checked up front, and with ``--continue_prediction`` a case
        counts as done only when each of its outputs (segmentation, uncertainty maps, npz) reads back whole, on
        the grid of the case's input; damaged ones are named in the log and predicted again.

        A folder is listed by :func:`input_cases` (nnU-Net's identifiers and file matching, same order): nnU-Net's
        ``create_lists_from_splitted_dataset_folder`` forks a 12-process ``Pool`` just to list files, and that
        pool's ``terminate`` hung 1 run in 41 on a loaded 2-core machine (a worker blocked on the task queue's
        lock, the parent joining it).
        """
        if isinstance(list_of_lists_or_source_folder, str):
            list_of_lists_or_source_folder = list(input_cases(list_of_lists_or_source_folder,
                                                              self.dataset_json).values())
        lists, outputs, prev = super()._manage_input_and_output_lists(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
            folder_with_segs_from_prev_stage, True, part_id, num_parts, save_probabilities)
        self._check_input_lists(lists, outputs)
        if not overwrite and outputs is not None:
            problems = [self._output_problems(o, files[0], save_probabilities) for o, files in zip(outputs, lists)]
            keep = [i for i, found in enumerate(problems) if found]
            damaged = [f"{basename(f)} ({why})" for found in problems for f, why in found.items()
                       if why != MISSING]
            if damaged:
                logger.info(f"Predicting again {len(damaged)} damaged output(s): {'; '.join(damaged)}.")
            logger.info(f"{len(outputs) - len(keep)} cases already predicted; {len(keep)} to go.")
            lists, outputs, prev = [lists[i] for i in keep], [outputs[i] for i in keep], [prev[i] for i in keep]
        if not self.sampling.vanilla and self.pre_segmentation is not None and outputs is not None:
            for o in outputs:
                self.pre_segmentation.check_case(basename(o))
        return lists, outputs, prev

    def _uncertainty_folder(self, output_truncated: str) -> str:
        """Where the maps and ``case_scores.json`` go: ``-o_uncertainty``, else ``uncertainty/`` beside the output."""
        return self.uncertainty_folder or join(os.path.dirname(output_truncated), UNCERTAINTY_FOLDER)

    def _uncertainty_file(self, output_truncated: str) -> str:
        return join(self._uncertainty_folder(output_truncated),
                    basename(output_truncated) + UNCERTAINTY_SUFFIX + self.dataset_json["file_ending"])

    def _class_uncertainty_files(self, output_truncated: str) -> list[str]:
        """One map per foreground class (``CASE_uncertainty_class1.nii.gz`` ...) with --uncertainty_per_class."""
        if not self.sampling.uncertainty_per_class or self.sampling.uncertainty == "none":
            return []
        return class_uncertainty_files(self._uncertainty_file(output_truncated), self.label_manager,
                                       self.dataset_json["file_ending"])

    def _output_problems(self, output_truncated: str, source_file: str, save_probabilities: bool) -> dict[str, str]:
        """{output file: why it cannot be kept} for a case whose first input channel is ``source_file``; empty
        when the case is complete. Images must read back whole on the source's grid (checked for SimpleITK's
        formats; others only for presence), the npz must hold the case's probabilities."""
        images = [output_truncated + self.dataset_json["file_ending"]]
        if self.sampling.uncertainty != "none":
            images.append(self._uncertainty_file(output_truncated))
        images += self._class_uncertainty_files(output_truncated)
        problems = {f: MISSING for f in images if not isfile(f)}
        if save_probabilities and not isfile(output_truncated + ".npz"):
            problems[output_truncated + ".npz"] = MISSING
        if problems or not issubclass(self.plans_manager.image_reader_writer_class, SimpleITKIO):
            return problems
        source = read_image_header(source_file)
        for f in images:
            if (why := image_file_problem(f, source)) is not None:
                problems[f] = why
        if save_probabilities:
            shape = tuple(reversed(source.GetSize()))
            shape = (1, *shape) if len(shape) == 2 else shape  # nnU-Net reads 2D images as (1, y, x)
            why = probability_file_problem(output_truncated + ".npz", self.label_manager.num_segmentation_heads,
                                           shape)
            if why is not None:
                problems[output_truncated + ".npz"] = why
        return problems

    def _check_input_lists(self, lists: list[list[str]], outputs: list[str] | None) -> None:
        """nnU-Net names each output after its case identifier; without outputs the cases are numbered."""
        if not lists:
            logger.info("No input cases to predict.")
        names = [basename(o) for o in outputs] if outputs is not None else [f"#{i}" for i in range(len(lists))]
        check_cases(dict(zip(names, lists)), self.dataset_json, len(self.configuration_manager.patch_size))

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 2):
        """Sample each case on the device while up to ``num_processes_segmentation_export`` threads export
        earlier ones (resampling and writing release the GIL).

        As in nnU-Net's predictor, at most one case more than there are export threads waits for its export
        (each holds its probabilities and uncertainty maps): sampling pauses until a slot frees, so memory
        does not grow with the number of cases. A failed export stops the run at once.
        """
        workers = num_processes_segmentation_export
        check_at_least("num_processes_segmentation_export (-nps)", workers, 1)
        results, pending = [], set()
        with ThreadPoolExecutor(workers) as pool:
            for item in tqdm(data_iterator, desc="cases", unit="case", disable=not self.allow_tqdm):
                data = item["data"]
                if isinstance(data, str):
                    path, data = data, torch.from_numpy(np.load(data))
                    os.remove(path)
                ofile, properties = item["ofile"], item["data_properties"]
                case = basename(ofile) if ofile is not None else None
                result = self.predict_case(data, properties, case)
                if ofile is None:
                    results.append(result)
                    continue
                if result.scores is not None:  # per case: a crash later keeps the finished cases' scores
                    record_case_scores(join(self._uncertainty_folder(ofile), CASE_SCORES_FILE), {case: result.scores})
                unc_file = self._uncertainty_file(ofile) if result.uncertainty is not None else None
                if unc_file is not None:
                    maybe_mkdir_p(os.path.dirname(unc_file))
                pending.add(pool.submit(export_case, result.probabilities, result.uncertainty, properties,
                                        self.plans_manager, self.configuration_manager, self.dataset_json,
                                        ofile, save_probabilities, unc_file, result.class_uncertainty))
                del result, data
                pending = _wait_for_exports(pending, workers + self.max_cases_waiting_for_export)
            _wait_for_exports(pending, 0)
        compute_gaussian.cache_clear()
        return results

    def predict_single_npy_array(self, input_image: np.ndarray, image_properties: dict,
                                 segmentation_previous_stage: np.ndarray = None, output_file_truncated: str = None,
                                 save_or_return_probabilities: bool = False):
        """One image (C, *shape) in nnU-Net's axis order -> files, or (segmentation, probabilities, uncertainty).

        The returned arrays are in the input's shape (cropping and resampling undone); ``uncertainty`` is
        None with ``-uncertainty none``.
        """
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        ppa = PreprocessAdapterFromNpy([input_image], [segmentation_previous_stage], [image_properties],
                                       [output_file_truncated], self.plans_manager, self.dataset_json,
                                       self.configuration_manager, num_threads_in_multithreaded=1, verbose=self.verbose)
        item = next(ppa)
        if output_file_truncated is not None:
            self.predict_from_data_iterator([item], save_or_return_probabilities, 1)
            return None
        result = self.predict_case(item["data"], item["data_properties"], None)
        seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
            result.probabilities.clamp_min(1e-8).log(), self.plans_manager, self.configuration_manager,
            self.label_manager, item["data_properties"], return_probabilities=True)
        unc = None if result.uncertainty is None else uncertainty_to_original_geometry(
            result.uncertainty, item["data_properties"], self.plans_manager, self.configuration_manager,
            self.label_manager)
        return seg, probs, unc
