"""Checks of raw input images before any model runs: one clear sentence per problem, naming the case."""
from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from nnunet_pdddpm.errors import PDDDPMUserError


def check_case_files(case: str, files: list[str], num_channels: int, model_ndim: int, file_ending: str) -> None:
    """Channel count, readability, same grid for all channels, finite and non-empty voxels, dimensionality.

    ``model_ndim`` is the length of the configuration's patch size: a 3D configuration needs 3D images,
    a 2d configuration takes 2D images or 3D volumes (predicted slice by slice).
    """
    if len(files) != num_channels:
        raise PDDDPMUserError(f"Case {case} has {len(files)} channel files but the model expects {num_channels} "
                              f"(CASE_0000{file_ending} ... CASE_{num_channels - 1:04d}{file_ending}); "
                              f"add or remove files.")
    first = None
    for f in files:
        if not os.access(f, os.R_OK):
            raise PDDDPMUserError(f"Input file {f} cannot be read; check its permissions.")
        try:
            image = sitk.ReadImage(f)
        except RuntimeError:
            raise PDDDPMUserError(f"Input file {f} is not a readable image; replace it.") from None
        if image.GetDimension() < model_ndim:
            raise PDDDPMUserError(f"Case {case} is a {image.GetDimension()}D image but the model's configuration is "
                                  f"{model_ndim}D; use a 2d configuration for 2D images.")
        if first is None:
            first = image
        elif image.GetSize() != first.GetSize() or not np.allclose(image.GetSpacing(), first.GetSpacing(),
                                                                     rtol=1e-3):
            raise PDDDPMUserError(f"The channels of case {case} differ in size or spacing ({os.path.basename(f)}: "
                                  f"{image.GetSize()} at {np.round(image.GetSpacing(), 3).tolist()} vs "
                                  f"{first.GetSize()} at {np.round(first.GetSpacing(), 3).tolist()}); "
                                  f"resample them to one grid.")
        array = sitk.GetArrayViewFromImage(image)
        if not np.isfinite(array).all():
            raise PDDDPMUserError(f"Input file {f} contains NaN or infinite voxels; replace them before predicting.")
        if not array.any():
            raise PDDDPMUserError(f"Input file {f} is empty (all voxels are zero); check the file.")
