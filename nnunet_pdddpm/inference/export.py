"""Export of a sampled case to the input's geometry, through nnU-Net's own resampling and cropping.

Files are written under temporary names, read back and renamed (``io_utils.atomic_path``); the segmentation
is written last, so its presence means the case is complete (``--continue_prediction`` still checks each
file, as a disk can fail in other ways).
"""
from __future__ import annotations

import contextlib
import pickle
from typing import Iterator

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.image_integrity import verify_written_image
from nnunet_pdddpm.io_utils import atomic_path, write_bytes_atomic
from nnunet_pdddpm.output_names import UNCERTAINTY_SUFFIX
from nnunet_pdddpm.probability_files import verify_written_probabilities


def uncertainty_to_original_geometry(uncertainty: torch.Tensor | np.ndarray, properties: dict,
                                     plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                     label_manager: LabelManager) -> np.ndarray:
    """(*preprocessed) map -> (*original) float32, with the same steps nnU-Net applies to probabilities."""
    unc = torch.as_tensor(np.asarray(uncertainty, dtype=np.float32))[None]
    spacing_transposed = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    shape_cropped = properties["shape_after_cropping_and_before_resampling"]
    current_spacing = configuration_manager.spacing if len(configuration_manager.spacing) == len(shape_cropped) \
        else [spacing_transposed[0], *configuration_manager.spacing]
    unc = configuration_manager.resampling_fn_probabilities(unc, shape_cropped, current_spacing, spacing_transposed)
    unc = label_manager.revert_cropping_on_probabilities(torch.as_tensor(np.asarray(unc)),
                                                         properties["bbox_used_for_cropping"],
                                                         properties["shape_before_cropping"])
    unc = np.asarray(unc)[0].transpose(plans_manager.transpose_backward)
    return unc.astype(np.float32)


def class_uncertainty_files(uncertainty_file: str, label_manager: LabelManager, file_ending: str) -> list[str]:
    """``CASE_uncertainty_class<label>`` + ending for each foreground channel (channel k is label k's map; with
    nnU-Net regions, region k)."""
    stem = uncertainty_file[: -len(file_ending)]
    return [f"{stem}_class{k}{file_ending}" for k in range(1, label_manager.num_segmentation_heads)]


def write_float_image(array: np.ndarray, properties: dict, filename: str) -> None:
    """Write a float32 map with the geometry nnU-Net's SimpleITK reader recorded (atomically)."""
    if "sitk_stuff" not in properties:
        raise PDDDPMUserError("Uncertainty maps can only be written for datasets read with SimpleITK "
                              "(e.g. .nii.gz, .nrrd, .mha); pass -uncertainty none for this dataset.")
    geo = properties["sitk_stuff"]
    if len(geo["spacing"]) == 2:
        array = array[0]
    image = sitk.GetImageFromArray(array.astype(np.float32, copy=False))
    image.SetSpacing(geo["spacing"])
    image.SetOrigin(geo["origin"])
    image.SetDirection(geo["direction"])
    with atomic_path(filename, lambda tmp: verify_written_image(tmp, image.GetSize())) as tmp:
        with _writer_errors():
            sitk.WriteImage(image, tmp, True)


@contextlib.contextmanager
def _writer_errors() -> Iterator[None]:
    """SimpleITK raises ``RuntimeError`` with a C++ trace when it cannot open a file; make it an ``OSError``
    whose text is ITK's last line, so ``atomic_path`` reports it like any other failed write."""
    try:
        yield
    except RuntimeError as e:
        raise OSError(None, str(e).strip().splitlines()[-1]) from None


def _segmentation_check(seg: np.ndarray, properties: dict):
    """``verify`` for ``atomic_path``: the written segmentation reads back whole, with ``seg``'s size.

    Only for SimpleITK's formats (``sitk_stuff`` recorded); other readers' files are checked by size on disk.
    """
    if "sitk_stuff" not in properties:
        return None
    shape = seg.shape[1:] if len(properties["sitk_stuff"]["spacing"]) == seg.ndim - 1 else seg.shape
    return lambda tmp: verify_written_image(tmp, tuple(reversed(shape)))


def export_case(probabilities: torch.Tensor, uncertainty: torch.Tensor | None, properties: dict,
                plans_manager: PlansManager, configuration_manager: ConfigurationManager, dataset_json: dict,
                output_file_truncated: str, save_probabilities: bool, uncertainty_file: str | None = None,
                class_uncertainty: torch.Tensor | None = None) -> None:
    """Write the uncertainty map (``uncertainty_file``), per class maps (``class_uncertainty`` (K, *preprocessed),
    optional), ``CASE.npz``/``.pkl`` (optional), then ``CASE`` + ending.

    probabilities: (K, *preprocessed) ensemble mean summing to 1 over K. They go through nnU-Net's
    export as log-probabilities, whose softmax gives them back, so the segmentation is nnU-Net's
    argmax (for a binary dataset: mean foreground probability > 0.5, as in the paper).
    """
    label_manager = plans_manager.get_label_manager(dataset_json)
    ending = dataset_json["file_ending"]
    rw = plans_manager.image_reader_writer_class()
    if uncertainty is not None:
        if uncertainty_file is None:
            uncertainty_file = output_file_truncated + UNCERTAINTY_SUFFIX + ending
        unc = uncertainty_to_original_geometry(uncertainty.cpu(), properties, plans_manager, configuration_manager,
                                               label_manager)
        write_float_image(unc, properties, uncertainty_file)
        if class_uncertainty is not None:
            files = class_uncertainty_files(uncertainty_file, label_manager, ending)
            for k, file in enumerate(files, start=1):
                unc = uncertainty_to_original_geometry(class_uncertainty[k].cpu(), properties, plans_manager,
                                                       configuration_manager, label_manager)
                write_float_image(unc, properties, file)
    log_probs = torch.log(probabilities.float().cpu().clamp_min(1e-8))
    result = convert_predicted_logits_to_segmentation_with_correct_shape(
        log_probs, plans_manager, configuration_manager, label_manager, properties,
        return_probabilities=save_probabilities)
    seg = result[0] if save_probabilities else result
    if save_probabilities:
        probabilities = result[1].astype(np.float32)
        with atomic_path(output_file_truncated + ".npz",
                         lambda tmp: verify_written_probabilities(tmp, probabilities.shape)) as tmp:
            np.savez_compressed(tmp, probabilities=probabilities)
        write_bytes_atomic(pickle.dumps(properties), output_file_truncated + ".pkl")
    with atomic_path(output_file_truncated + ending, _segmentation_check(seg, properties)) as tmp:
        with _writer_errors():
            rw.write_seg(seg, tmp, properties)
