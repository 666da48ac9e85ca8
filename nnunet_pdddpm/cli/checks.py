"""Checks the console scripts run on their arguments before any model loads: one sentence per problem."""
from __future__ import annotations

import os
from pathlib import Path

from nnunet_pdddpm.errors import PDDDPMUserError


def check_output_folder(flag: str, folder: str | os.PathLike) -> None:
    """Raise if ``folder`` (to be created if missing) is an existing file or lies under one."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise PDDDPMUserError(f"{flag} {folder} is an existing file, not a folder; give a folder path.")
    _check_creatable_under(flag, folder, path.parent)


def check_output_file(flag: str, file: str | os.PathLike) -> None:
    """Raise if the folder of output file ``file`` cannot be created because a file lies on its path."""
    _check_creatable_under(flag, file, Path(file).parent)


def _check_creatable_under(flag: str, given: str | os.PathLike, folder: Path) -> None:
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise PDDDPMUserError(f"{flag} {given} lies under {parent}, which is a file, so the folder cannot be "
                                      f"created; give another path.")
            return


def require_nnunet_results() -> None:
    """Our commands find trained models only through nnU-Net's ``nnUNet_results`` variable."""
    if not os.environ.get("nnUNet_results"):
        raise PDDDPMUserError("The environment variable nnUNet_results is not set; point it at the folder with your "
                              "trained nnU-Net models (export nnUNet_results=/path/to/nnUNet_results).")


def dataset_name(dataset: str) -> str:
    """``-d`` (a dataset ID or ``DatasetXXX_Name``) as nnU-Net's dataset name."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except ValueError:
        raise PDDDPMUserError(f"-d {dataset} is neither a dataset ID (e.g. 4) nor a dataset name (e.g. "
                              f"Dataset004_Hippocampus).") from None
    except RuntimeError:
        raise PDDDPMUserError(f"Dataset {dataset} was not found in nnUNet_raw, nnUNet_preprocessed or "
                              f"nnUNet_results; check -d and the nnU-Net environment variables.") from None


def check_inputs_against_model(images: str, dataset: str, trainer: str, plans: str, configuration: str,
                               part_id: int = 0, num_parts: int = 1,
                               pre_segmentation_folder: str | None = None) -> None:
    """Check the input images (and the ``-preseg_probabilities`` files of ``pre_segmentation_folder``) against the
    model folder's dataset.json and plans, reading no checkpoint.

    A model folder without them is passed over: loading the model then says what is missing.
    """
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_pdddpm.inference.input_checks import (
        check_input_folder,
        check_pre_segmentation_files,
        model_input_spec,
    )

    spec = model_input_spec(get_output_folder(dataset, trainer, plans, configuration), configuration)
    if spec is not None:
        cases = check_input_folder(images, *spec, part_id=part_id, num_parts=num_parts)
        if pre_segmentation_folder is not None:
            if not os.path.isdir(pre_segmentation_folder):
                raise PDDDPMUserError(f"-preseg_probabilities folder {pre_segmentation_folder} does not exist.")
            check_pre_segmentation_files(pre_segmentation_folder, cases, spec[0])


def check_mirrored_members(asked: bool | None, allowed_mirroring_axes) -> None:
    """``--mirrored_members`` on a denoiser trained without mirroring would change nothing: one sentence instead.
    (The trainer's default on such a model samples unmirrored, as nnU-Net's test-time mirroring does.)"""
    if asked and not allowed_mirroring_axes:
        raise PDDDPMUserError("--mirrored_members needs a denoiser trained with mirroring, and this one allows no "
                              "mirror axis (its trainer's inference_allowed_mirroring_axes); drop the flag.")
