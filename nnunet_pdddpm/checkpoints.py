"""Checkpoints that load without running code, and never look complete when they are not.

A ``.pth`` file is a pickle: loading it with ``torch.load(weights_only=False)`` (what nnU-Net does) runs
whatever the file names. Here every checkpoint is read with the safe unpickler instead:

- our own (``PDDDPMTrainer``, ``PDDDPMAttUNetTrainer``) hold only tensors and plain Python data
  (:func:`save_checkpoint_atomic`) and load with no allow-list (:func:`load_checkpoint_safe`);
- nnU-Net's (any trainer, e.g. a pre-segmenter) hold numpy scalars in the logger's entries and load with
  :data:`NNUNET_CHECKPOINT_GLOBALS` allowed, and nothing else (:func:`load_nnunet_checkpoint`).

Anything else is refused in one sentence naming the offending type. Opting in to a full pickle is explicit:
``--trust_checkpoints`` on our commands, ``nnunet_pdddpm_trust_checkpoints=1`` for ``nnUNetv2_train``
(the pre-segmenter of the final validation and of training on its predictions).
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any

import numpy as np
import torch

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.io_utils import atomic_path

TRUST_VARIABLE = "nnunet_pdddpm_trust_checkpoints"
OPT_IN = (f"opt in with --trust_checkpoints (for nnUNetv2_train: {TRUST_VARIABLE}=1), which lets the file run code, "
          f"only for files you trust")

_NUMPY_SCALAR = np.float32(0).__reduce__()[0]  # numpy's scalar reconstructor, whatever module holds it

#: What nnU-Net 2.8.1's ``save_checkpoint`` writes besides tensors and plain data: the logger's values
#: (``mean_fg_dice``, ``ema_fg_dice``, ``dice_per_class_or_region``, ``train_losses``, ``val_losses``) and
#: ``_best_ema`` are numpy scalars, pickled as ``scalar(dtype, raw bytes)``.
NNUNET_CHECKPOINT_GLOBALS: list = [
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),  # rebuilds a numpy scalar from dtype and bytes (numpy 2)
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),  # the same, as named in files written with numpy 1.x
    np.dtype,  # the scalar's dtype argument
    type(np.dtype(np.float32)),  # its class (numpy.dtypes.Float32DType): Dice and losses are float32
    type(np.dtype(np.float64)),  # numpy 1.x made float32 * 0.9 a float64: ema_fg_dice and _best_ema there
]


def trust_checkpoints_from_env() -> bool:
    """True when ``nnunet_pdddpm_trust_checkpoints=1``: the opt-in for loads inside ``nnUNetv2_train``."""
    return os.environ.get(TRUST_VARIABLE, "").strip().lower() in ("1", "true", "yes")


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
    """One of our own checkpoints: tensors and plain data only (``weights_only=True``, no allow-list)."""
    return _load(filename, map_location, [], "only load files you trust, with the tool that wrote them")


def load_nnunet_checkpoint(filename: str | os.PathLike, map_location: Any = "cpu",
                           trust_checkpoints: bool = False) -> dict:
    """A checkpoint of any nnU-Net trainer; ``trust_checkpoints`` unpickles it in full (it may run code)."""
    if trust_checkpoints:
        _check_exists(filename)
        return torch.load(filename, map_location=map_location, weights_only=False)
    return _load(filename, map_location, NNUNET_CHECKPOINT_GLOBALS, OPT_IN)


def _check_exists(filename: str | os.PathLike) -> None:
    if not os.path.isfile(filename):
        raise PDDDPMUserError(f"Checkpoint {filename} does not exist; train the model first or check the path.")


def _load(filename: str | os.PathLike, map_location: Any, allowed: list, opt_in: str) -> dict:
    _check_exists(filename)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if any(garbage in str(e) for garbage in _NOT_A_PICKLE):
            raise _unreadable(filename, str(e)) from None
        raise PDDDPMUserError(f"Checkpoint {filename} cannot be loaded safely: it holds {_offending_type(str(e))}, "
                              f"which is not among the types torch.load(weights_only=True) may load without running "
                              f"code; {opt_in}.") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise _unreadable(filename, str(e)) from None


_NOT_A_PICKLE = ("Unsupported operand", "String is too long")
_REFUSED = (re.compile(r"GLOBAL (\S+)"), re.compile(r"but got <class '([^']+)'>"),
            re.compile(r"reduce for unrecognized function (.+?)(?: which belongs|$)", re.MULTILINE))


def _offending_type(message: str) -> str:
    """The type named by torch's refusal (its message is the only place that says which)."""
    for pattern in _REFUSED:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return "objects other than tensors and plain data"


def _unreadable(filename: str | os.PathLike, message: str) -> PDDDPMUserError:
    lines = [line.strip() for line in message.split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
    reason = lines[0].split(". ")[0].rstrip(".") if lines else "unreadable"  # torch appends advice that is not ours
    return PDDDPMUserError(f"Checkpoint {filename} cannot be read ({reason}); it is truncated or not a PyTorch "
                           f"checkpoint, so train or copy it again.")


def state_dict_problem(error: BaseException, limit: int = 200) -> str:
    """The first concrete line of a ``load_state_dict`` error ("size mismatch for ..."), not its generic title."""
    lines = [line.strip().rstrip(".:") for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."
