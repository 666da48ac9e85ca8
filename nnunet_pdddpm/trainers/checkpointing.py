"""Checkpoints that load with ``torch.load(weights_only=True)`` and never look complete when they are not.

nnU-Net's own checkpoints hold numpy scalars (the logger's Dice values) that the safe unpickler
refuses, and ``torch.save`` writes in place. Here every value is converted to plain Python/tensor
types and the file is written to a temporary name and renamed.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.io_utils import atomic_path


def to_safe_types(obj: Any) -> Any:
    """Recursively replace numpy scalars/arrays by Python numbers/lists (tensors and devices pass through)."""
    if isinstance(obj, dict):
        return {k: to_safe_types(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        converted = [to_safe_types(v) for v in obj]
        return converted if isinstance(obj, list) else tuple(converted)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_checkpoint_atomic(checkpoint: dict, filename: str | os.PathLike) -> None:
    """``torch.save`` of a sanitised ``checkpoint`` through a temporary file and ``os.replace``."""
    with atomic_path(filename) as tmp:
        torch.save(to_safe_types(checkpoint), tmp)


def load_checkpoint_safe(filename: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with the safe unpickler; a file that needs arbitrary code is refused."""
    if not os.path.isfile(filename):
        raise PDDDPMUserError(f"Checkpoint {filename} does not exist; train the model first or check the path.")
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception:  # torch raises UnpicklingError (or RuntimeError) for unsafe content
        raise PDDDPMUserError(
            f"Checkpoint {filename} cannot be loaded safely (torch.load(weights_only=True) refused it: it holds "
            f"objects other than tensors and plain data); only load files you trust, with the tool that wrote them."
        ) from None
