"""nnU-Net's other entry points on ``PDDDPMPredictor``: each samples like ``predict_from_files`` or refuses.

``nnUNetPredictor`` (2.8.1) has more public calls than the one the CLI uses. Those that take files or arrays
are routed through :meth:`PDDDPMPredictor.predict_case` (and ``predict_from_data_iterator`` when they write
files, so the uncertainty maps are written too) and keep nnU-Net's return values. Those that would call the
denoiser as nnU-Net calls a segmentation network (the image alone, one pass per patch), or set one up without
its PD-DDPM settings, raise :class:`PDDDPMUserError` naming the call to use instead.
"""
from __future__ import annotations

import os
from os.path import join

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p, save_json
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.data_iterators import PreprocessAdapter
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.settings import check_at_least

_WITHOUT_MASK = ("would run the denoiser without its noisy mask and timestep; use predict_case (or predict_from_files) "
                 "instead.")


def _output_folder(output_folder_or_list_of_truncated_output_files) -> str | None:
    """The folder nnU-Net writes its run records to: the output folder, or that of the first output file."""
    if isinstance(output_folder_or_list_of_truncated_output_files, str):
        return output_folder_or_list_of_truncated_output_files
    if isinstance(output_folder_or_list_of_truncated_output_files, list):
        return os.path.dirname(output_folder_or_list_of_truncated_output_files[0]) or os.path.curdir
    return None


class NNUNetEntryPoints:
    """Mixed into ``PDDDPMPredictor`` ahead of ``nnUNetPredictor``; relies on its ``predict_case``,
    ``_manage_input_and_output_lists`` and ``predict_from_data_iterator``."""

    # ---------------------------------------------------------------- refused
    def manual_initialization(self, *args, **kwargs):
        raise PDDDPMUserError("PDDDPMPredictor.manual_initialization would set up a denoiser without its PD-DDPM "
                              "settings (diffusion schedule, T', ensemble); use manual_initialization_pdddpm (or "
                              "initialize_from_trained_model_folder) instead.")

    def predict_sliding_window_return_logits(self, *args, **kwargs):
        raise PDDDPMUserError(f"PDDDPMPredictor.predict_sliding_window_return_logits {_WITHOUT_MASK}")

    def _internal_predict_sliding_window_return_logits(self, *args, **kwargs):
        raise PDDDPMUserError(f"PDDDPMPredictor._internal_predict_sliding_window_return_logits {_WITHOUT_MASK}")

    def _internal_maybe_mirror_and_predict(self, *args, **kwargs):
        raise PDDDPMUserError(f"PDDDPMPredictor._internal_maybe_mirror_and_predict {_WITHOUT_MASK}")

    # ---------------------------------------------------------------- sampled
    def predict_from_files(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str | None = None, num_parts: int = 1,
                           part_id: int = 0):
        """nnU-Net's ``predict_from_files``; the segmentations go to the output folder, the uncertainty maps to
        ``uncertainty/`` beside them (or ``uncertainty_folder``). Without an output (None) the cases come back as
        nnU-Net returns them: per case the segmentation, or (segmentation, probabilities) with
        ``save_probabilities``, in the input geometry."""
        check_at_least("num_processes_preprocessing (-npp)", num_processes_preprocessing, 1)
        check_at_least("num_processes_segmentation_export (-nps)", num_processes_segmentation_export, 1)
        if output_folder_or_list_of_truncated_output_files is not None:
            # nnU-Net records its arguments by reading locals() over this method's signature: names must match
            return super().predict_from_files(
                list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
                overwrite, num_processes_preprocessing, num_processes_segmentation_export,
                folder_with_segs_from_prev_stage, num_parts, part_id)
        lists, _, prev = self._manage_input_and_output_lists(
            list_of_lists_or_source_folder, None, folder_with_segs_from_prev_stage, overwrite, part_id, num_parts,
            save_probabilities)
        if not lists:
            return []
        cases = self._internal_get_data_iterator_from_lists_of_filenames(lists, prev, None,
                                                                         num_processes_preprocessing)
        return self._predict_in_input_geometry(cases, save_probabilities)

    def predict_from_files_sequential(self, list_of_lists_or_source_folder,
                                      output_folder_or_list_of_truncated_output_files,
                                      save_probabilities: bool = False, overwrite: bool = True,
                                      folder_with_segs_from_prev_stage: str | None = None):
        """``predict_from_files`` without worker processes: each case is preprocessed in this process and written
        by ``predict_from_data_iterator`` (segmentation and uncertainty maps); without an output (None), a list of
        segmentations (or (segmentation, probabilities) pairs) in the input geometry, as nnU-Net returns."""
        folder = _output_folder(output_folder_or_list_of_truncated_output_files)
        if folder is not None:  # the same run records nnU-Net's predict_from_files writes
            arguments = {"list_of_lists_or_source_folder": list_of_lists_or_source_folder,
                         "output_folder_or_list_of_truncated_output_files":
                             output_folder_or_list_of_truncated_output_files,
                         "save_probabilities": save_probabilities, "overwrite": overwrite,
                         "folder_with_segs_from_prev_stage": folder_with_segs_from_prev_stage}
            recursive_fix_for_json_export(arguments)
            maybe_mkdir_p(folder)
            save_json(arguments, join(folder, "predict_from_raw_data_args.json"))
            save_json(self.dataset_json, join(folder, "dataset.json"), sort_keys=False)
            save_json(self.plans_manager.plans, join(folder, "plans.json"), sort_keys=False)
        lists, outputs, prev = self._manage_input_and_output_lists(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
            folder_with_segs_from_prev_stage, overwrite, 0, 1, save_probabilities)
        if not lists:
            return []
        preprocessor = self.configuration_manager.preprocessor_class(verbose=self.verbose_preprocessing)
        cases = PreprocessAdapter(lists, prev, preprocessor, outputs, self.plans_manager, self.dataset_json,
                                  self.configuration_manager, num_threads_in_multithreaded=1)
        if outputs is None:
            return self._predict_in_input_geometry(cases, save_probabilities)
        return self.predict_from_data_iterator(cases, save_probabilities, 1)

    def predict_from_list_of_npy_arrays(self, image_or_list_of_images,
                                        segs_from_prev_stage_or_list_of_segs_from_prev_stage,
                                        properties_or_list_of_properties, truncated_ofname, num_processes: int = 3,
                                        save_probabilities: bool = False,
                                        num_processes_segmentation_export: int = default_num_processes):
        """Images (C, *shape) in nnU-Net's axis order -> with ``truncated_ofname``, files (segmentations and
        uncertainty maps) and an empty list; without, per image the segmentation (*shape), or (segmentation,
        probabilities (K, *shape)) with ``save_probabilities``, in the input geometry, as nnU-Net returns.
        For uncertainty maps in memory use ``predict_single_npy_array``."""
        cases = self.get_data_iterator_from_raw_npy_data(
            image_or_list_of_images, segs_from_prev_stage_or_list_of_segs_from_prev_stage,
            properties_or_list_of_properties, truncated_ofname, num_processes)
        if truncated_ofname is None:
            return self._predict_in_input_geometry(cases, save_probabilities)
        return self.predict_from_data_iterator(cases, save_probabilities, num_processes_segmentation_export)

    def _predict_in_input_geometry(self, cases, return_probabilities: bool) -> list:
        """Sample each preprocessed case of ``cases`` (nnU-Net's ``{'data', 'data_properties'}`` items) and
        return what nnU-Net's in-memory calls return for it: the segmentation, or (segmentation, probabilities)."""
        results = []
        for item in cases:
            data = item["data"]
            if isinstance(data, str):  # nnU-Net's iterators may hand a large case over as a temporary .npy file
                path, data = data, torch.from_numpy(np.load(data))
                os.remove(path)
            result = self.predict_case(data, item["data_properties"], None)
            # nnU-Net resamples logits and applies softmax: log-probabilities come back unchanged through it
            results.append(convert_predicted_logits_to_segmentation_with_correct_shape(
                result.probabilities.clamp_min(1e-8).log(), self.plans_manager, self.configuration_manager,
                self.label_manager, item["data_properties"], return_probabilities=return_probabilities))
        return results
