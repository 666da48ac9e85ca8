"""nnU-Net's probability files (``CASE.npz`` from ``--save_probabilities``: key ``probabilities``, (K, *shape),
channel 0 = background), read under one contract wherever they come in: ``-preseg_probabilities``, the
evaluation's ``-prob``, and the check of our own ``.npz`` outputs.

The contract: the archive is complete, the values are finite, in [0, 1] and sum to 1 over the classes at
every voxel (within :data:`SUM_TOLERANCE`), with the number of classes the caller expects.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.io_utils import IncompleteWriteError

__all__ = ["SUM_TOLERANCE", "probabilities_problem", "read_probabilities", "verify_written_probabilities"]

# nnU-Net stores float32 (or float16) softmax outputs; after its resampling their per-voxel sums stay within
# ~1e-5 of 1 in float32 and ~1e-3 in float16. Anything further off is not a probability distribution
# (logits, a one-hot map with a missing class, an all-zero array) and would be silently renormalised.
SUM_TOLERANCE = 1e-3


class _Unreadable(Exception):
    """The archive cannot be read; the message is a clause."""


def _load(path: str | os.PathLike) -> np.ndarray:
    try:
        with np.load(path) as npz:
            if "probabilities" not in npz:
                raise _Unreadable(f"has no 'probabilities' array (keys: {', '.join(npz.files) or 'none'})")
            return np.asarray(npz["probabilities"])
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
        raise _Unreadable(f"cannot be read as an .npz archive ({e})") from None


def probabilities_problem(probabilities: np.ndarray, num_classes: int | None = None) -> str | None:
    """Why ``probabilities`` (K, *shape) is not a per-voxel distribution over ``num_classes`` classes, as a
    clause; None when it is."""
    if probabilities.ndim < 2 or not np.issubdtype(probabilities.dtype, np.floating):
        return f"holds a {probabilities.dtype} array of shape {probabilities.shape}, not (K, *shape) probabilities"
    if num_classes is not None and probabilities.shape[0] != num_classes:
        return f"has {probabilities.shape[0]} classes but the dataset has {num_classes}"
    n_bad = probabilities.size - int(np.count_nonzero(np.isfinite(probabilities)))
    if n_bad:
        return f"holds NaN or infinite values ({n_bad} of {probabilities.size})"
    low, high = float(probabilities.min()), float(probabilities.max())
    if low < -SUM_TOLERANCE or high > 1 + SUM_TOLERANCE:
        return f"holds values from {low:.4g} to {high:.4g}, outside [0, 1]"
    sums = probabilities.sum(0, dtype=np.float64)
    worst = float(np.abs(sums - 1).max())
    if worst > SUM_TOLERANCE:
        n_off = int(np.count_nonzero(np.abs(sums - 1) > SUM_TOLERANCE))
        return (f"does not sum to 1 over its classes at {n_off} of {sums.size} voxels (off by up to {worst:.3g}; "
                f"tolerance {SUM_TOLERANCE})")
    return None


def read_probabilities(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """The (K, *shape) float32 probabilities of ``path``, clipped to [0, 1]; one sentence if they break the
    contract (see the module docstring)."""
    try:
        probabilities = _load(path)
    except _Unreadable as e:
        raise PDDDPMUserError(f"{path} {e}; replace it with the file nnUNetv2_predict --save_probabilities "
                              f"wrote.") from None
    problem = probabilities_problem(probabilities, num_classes)
    if problem is not None:
        raise PDDDPMUserError(f"{path} {problem}; expected softmax probabilities as nnUNetv2_predict "
                              f"--save_probabilities writes them for this dataset.")
    return np.clip(probabilities.astype(np.float32, copy=False), 0.0, 1.0)


def probability_file_problem(path: str | os.PathLike, num_classes: int, shape: tuple[int, ...]) -> str | None:
    """Why an existing ``path`` cannot stand as the probabilities of a case of ``shape`` (nnU-Net's axis order),
    as a clause; None when it can."""
    if not os.path.isfile(path):
        return "it is missing"
    try:
        probabilities = _load(path)
    except _Unreadable as e:
        return f"it {e}"
    if tuple(probabilities.shape[1:]) != tuple(shape):
        return f"its shape {probabilities.shape[1:]} is not the case's {tuple(shape)}"
    problem = probabilities_problem(probabilities, num_classes)
    return None if problem is None else f"it {problem}"


def verify_written_probabilities(path: str, shape: tuple[int, ...]) -> None:
    """Read a just-written ``.npz`` back (every member's CRC is checked on reading) and compare its shape;
    raises :class:`~nnunet_pdddpm.io_utils.IncompleteWriteError` (``verify`` of ``atomic_path``)."""
    try:
        probabilities = _load(path)
    except _Unreadable as e:
        raise IncompleteWriteError(str(e)) from None
    if probabilities.shape != tuple(shape):
        raise IncompleteWriteError(f"its shape {probabilities.shape} is not the {tuple(shape)} written")
