"""Make nnU-Net find our trainers by name without touching the installed nnunetv2.

nnU-Net 2.8.1 looks up ``-tr NAME`` in its own package and then in the folders listed in the
environment variable ``nnUNet_extTrainer`` (read at call time). ``trainer_folder()`` is the folder
holding the one shim module; ``eval "$(nnunet_pdddpm_env)"`` exports it for a shell, and our own
commands call ``ensure_trainer_discovery()``.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "nnUNet_extTrainer"


def trainer_folder() -> str:
    """Absolute path of the folder nnU-Net should scan (``nnunet_pdddpm/nnunet_ext``)."""
    return str(Path(__file__).resolve().parent / "nnunet_ext")


def extended_value(current: str | None) -> str:
    """``current`` (``os.pathsep``-separated) with our folder appended once."""
    parts = [p for p in (current or "").split(os.pathsep) if p]
    folder = trainer_folder()
    if folder not in parts:
        parts.append(folder)
    return os.pathsep.join(parts)


def ensure_trainer_discovery() -> None:
    """Add our folder to ``nnUNet_extTrainer`` in this process (and so in its children)."""
    os.environ[ENV_VAR] = extended_value(os.environ.get(ENV_VAR))


#: the pre-segmenter every command and trainer looks for first: what ``nnUNetv2_train D C F`` trains
DEFAULT_PRE_SEGMENTER_TRAINER = "nnUNetTrainer"
