"""Checks of raw input images before any model runs: one clear sentence per problem, naming the case."""
from __future__ import annotations

import os
import re
from os.path import basename, isfile, join

import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_json, subfiles
from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.image_integrity import IncompleteImageError, grid_difference, scan_voxels
from nnunet_pdddpm.probability_files import read_probabilities

# A channel file's name: CASE_XXXX.<ending>; used to spot images that nnU-Net would skip for their ending.
_CHANNEL_FILE = re.compile(r".+_\d{4}\..+")
_CHANNEL_NUMBER = re.compile(r".+_(\d{4})\.[^_]+")
# nnU-Net's Tiff3DIO reads the spacing of CASE_XXXX.tif from CASE_XXXX.json next to it.
_SIDECAR_ENDINGS = (".json",)
# The largest |voxel| we accept. nnU-Net normalises in float32 (z-score: mean, then the mean of squared
# deviations): one voxel of 1e20 squares to 1e40 > float32's 3.4e38, the variance becomes inf and the whole
# channel 0, and the case is still predicted. 1e15 squares to 1e30, so a sum of squares stays finite up to
# 3e8 voxels (a 700^3 volume), far above any intensity a scanner writes.
MAX_ABS_VOXEL = 1e15
# Files whose voxels passed, by (path, size, mtime): the CLI checks before loading models and the predictor
# checks again for users of the Python API; this keeps the voxel pass to one per file.
_passed: set[tuple[str, int, int]] = set()


def input_cases(folder: str, dataset_json: dict, part_id: int = 0, num_parts: int = 1) -> dict[str, list[str]]:
    """Case identifier -> channel files (``CASE_XXXX<file_ending>``) of ``folder`` for part ``part_id``, as
    nnU-Net lists them (``get_identifiers_from_splitted_dataset_folder``).

    Raises for files nnU-Net would skip or misread for their name (:func:`check_file_endings`).
    """
    ending = dataset_json["file_ending"]
    check_file_endings(folder, ending)
    files = subfiles(folder, suffix=ending, join=False, sort=True)
    if not files:
        raise PDDDPMUserError(f"The input folder {folder} holds no images ending with {ending}; give the folder of "
                              f"CASE_0000{ending} files (one per channel).")
    cases = list(map(str, get_identifiers_from_splitted_dataset_folder(folder, ending)))[part_id::num_parts]
    return {case: create_paths_fn(folder, files, ending, case) for case in cases}


def check_file_endings(folder: str, file_ending: str) -> None:
    """Raise if ``folder`` holds channel files nnU-Net would skip or misread for their name.

    ``CASE_XXXX.*`` files with another ending than the dataset's ``file_ending`` are skipped by nnU-Net
    without a word; ``*<file_ending>`` files without the 4-digit channel number are misread.
    """
    entries = [f for f in os.listdir(folder) if not f.startswith(".")]
    unlisted = sorted(f for f in entries if f.endswith(file_ending) and not isfile(join(folder, f)))
    if unlisted:  # nnU-Net lists regular files only: a case with such a channel would vanish from the count
        raise PDDDPMUserError(f"{len(unlisted)} entr{'y' if len(unlisted) == 1 else 'ies'} in {folder} named like "
                              f"images cannot be read as files (a broken link or a folder) and would be skipped: "
                              f"{_some(unlisted)}; replace them with the image files or remove them.")
    names = [f for f in entries if isfile(join(folder, f))]
    wrong = sorted(f for f in names if _CHANNEL_FILE.fullmatch(f) and not f.endswith(file_ending)
                   and not f.endswith(_SIDECAR_ENDINGS))
    if wrong:
        raise PDDDPMUserError(f"{len(wrong)} file(s) in {folder} do not end with the dataset's file ending "
                              f"'{file_ending}' (dataset.json) and would be skipped: {_some(wrong)}; convert or "
                              f"rename them to CASE_XXXX{file_ending}.")
    numbered = re.compile(r".+_\d{4}" + re.escape(file_ending))
    unnumbered = sorted(f for f in names if f.endswith(file_ending) and not numbered.fullmatch(f))
    if unnumbered:
        raise PDDDPMUserError(f"{len(unnumbered)} file(s) in {folder} lack the 4-digit channel number: "
                              f"{_some(unnumbered)}; name them CASE_0000{file_ending} (CASE_0001{file_ending} "
                              f"for a second channel, ...).")


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_input_folder(folder: str, dataset_json: dict, model_ndim: int, part_id: int = 0,
                       num_parts: int = 1) -> dict[str, list[str]]:
    """The cases of ``folder`` (see :func:`input_cases`), each checked with :func:`check_case_files`."""
    cases = input_cases(folder, dataset_json, part_id, num_parts)
    check_cases(cases, dataset_json, model_ndim)
    return cases


def check_cases(cases: dict[str, list[str]], dataset_json: dict, model_ndim: int) -> None:
    """Check each case's channel files (identifier -> files) with :func:`check_case_files`."""
    for case, files in cases.items():
        check_case_files(case, files, len(dataset_json["channel_names"]), model_ndim, dataset_json["file_ending"])


def model_input_spec(model_folder: str, configuration: str) -> tuple[dict, int] | None:
    """(dataset.json, dimensionality of the configuration's patch) of a model folder, read without its checkpoints.

    None when the folder lacks them: loading the model then says what is wrong.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_file, plans_file = join(model_folder, "dataset.json"), join(model_folder, "plans.json")
    if not (isfile(dataset_file) and isfile(plans_file)):
        return None
    try:
        patch_size = PlansManager(load_json(plans_file)).get_configuration(configuration).patch_size
    except (KeyError, ValueError, RuntimeError):
        return None
    return load_json(dataset_file), len(patch_size)


def check_case_files(case: str, files: list[str], num_channels: int, model_ndim: int, file_ending: str) -> None:
    """Channel count, readability, dimensionality, same grid for all channels, complete files, finite and
    non-empty voxels.

    ``model_ndim`` is the length of the configuration's patch size: a 3D configuration needs 3D images,
    a 2d configuration takes 2D images or 3D volumes (predicted slice by slice). Headers are read first;
    then one pass over each file's stored voxels (not SimpleITK's array, which shows a truncated file's
    missing part and NaN/inf voxels as zeros).
    """
    if len(files) != num_channels:
        raise PDDDPMUserError(f"Case {case} has {len(files)} channel files but the model expects {num_channels} "
                              f"(CASE_0000{file_ending} ... CASE_{num_channels - 1:04d}{file_ending}); "
                              f"add or remove files.")
    numbers = [m.group(1) if (m := _CHANNEL_NUMBER.fullmatch(basename(f))) else "" for f in files]
    if sorted(numbers) != [f"{i:04d}" for i in range(num_channels)]:
        raise PDDDPMUserError(f"Case {case} has the channel files {', '.join(sorted(map(basename, files)))} but the "
                              f"model expects the channels 0000 ... {num_channels - 1:04d}; rename them.")
    first = None
    for f in files:
        if not os.access(f, os.R_OK):
            raise PDDDPMUserError(f"Input file {f} cannot be read; check its permissions.")
        image = sitk.ImageFileReader()
        image.SetFileName(f)
        try:
            image.ReadImageInformation()
        except RuntimeError:
            raise PDDDPMUserError(f"Input file {f} is not a readable image; replace it.") from None
        if image.GetDimension() > 3:
            raise PDDDPMUserError(f"Input file {f} is a {image.GetDimension()}D image (size {image.GetSize()}) but "
                                  f"nnU-Net takes one 2D or 3D image per channel; split it into "
                                  f"CASE_0000{file_ending}, CASE_0001{file_ending}, ... (one file per channel).")
        if image.GetNumberOfComponents() > 1:
            raise PDDDPMUserError(f"Input file {f} has {image.GetNumberOfComponents()} values per voxel (a vector or "
                                  f"multi-channel image) but nnU-Net takes one value per voxel and file; split it into "
                                  f"CASE_0000{file_ending}, CASE_0001{file_ending}, ... (one file per channel).")
        if image.GetDimension() < model_ndim:
            raise PDDDPMUserError(f"Case {case} is a {image.GetDimension()}D image but the model's configuration is "
                                  f"{model_ndim}D; use a 2d configuration for 2D images.")
        if first is None:
            first = image
        elif (difference := grid_difference(first, image)) is not None:
            # nnU-Net stops for size and spacing but only warns for origin and direction, then predicts every
            # channel on the first one's grid: a silently misregistered input
            name, value, expected = difference
            raise PDDDPMUserError(f"The channels of case {case} are not on one grid: the {name} of "
                                  f"{basename(f)} is {value}, of {basename(files[0])} {expected}; resample them to "
                                  f"one grid (same size, spacing, origin and direction).")
    for f in files:
        check_voxels(f)


def check_voxels(f: str) -> None:
    """Raise if input file ``f`` is truncated or damaged, holds NaN/inf voxels, or is all zeros."""
    stat = os.stat(f)
    key = (os.path.realpath(f), stat.st_size, stat.st_mtime_ns)
    if key in _passed:
        return
    try:
        scan = scan_voxels(f)
    except IncompleteImageError as e:
        raise PDDDPMUserError(f"Input file {f} is incomplete: {e}; replace it with a complete copy.") from None
    except RuntimeError:
        raise PDDDPMUserError(f"Input file {f} is not a readable image; replace it.") from None
    if scan.n_non_finite:
        raise PDDDPMUserError(f"Input file {f} contains NaN or infinite voxels ({scan.n_non_finite} of "
                              f"{scan.n_voxels}); replace them before predicting.")
    if not scan.any_nonzero:
        raise PDDDPMUserError(f"Input file {f} is empty (all voxels are zero); check the file.")
    largest = max(abs(scan.minimum or 0.0), abs(scan.maximum or 0.0))
    if largest > MAX_ABS_VOXEL:
        raise PDDDPMUserError(f"Input file {f} holds a voxel of magnitude {largest:.3g}, beyond {MAX_ABS_VOXEL:.0e}, "
                              f"which overflows nnU-Net's float32 intensity normalisation; rescale the image or "
                              f"replace the outlier.")
    _passed.add(key)


def check_pre_segmentation_files(folder: str, cases: dict[str, list[str]], dataset_json: dict) -> None:
    """Each case's ``folder/CASE.npz`` exists and holds probabilities over the dataset's classes (see
    :mod:`nnunet_pdddpm.probability_files`) on the grid of the case's first channel file."""
    num_classes = len(dataset_json["labels"])
    for case, files in cases.items():
        path = join(folder, f"{case}.npz")
        if not isfile(path):
            raise PDDDPMUserError(f"No pre-segmentation probabilities for case {case} in {folder} (expected "
                                  f"{case}.npz from nnUNetv2_predict --save_probabilities).")
        probabilities = read_probabilities(path, num_classes)
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        shape = tuple(reversed(reader.GetSize()))
        if tuple(probabilities.shape[1:]) not in (shape, (1, *shape)):
            raise PDDDPMUserError(f"{path} has shape {probabilities.shape[1:]}, which does not match the image of "
                                  f"case {case} {shape}; use probabilities predicted for these images.")
