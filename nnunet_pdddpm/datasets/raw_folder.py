"""Where a converted dataset goes in nnU-Net's folders, and how it gets there without a half-written state.

nnU-Net finds a dataset as ``Dataset{id:03d}_{name}`` in ``nnUNet_raw`` (and ``nnUNet_preprocessed``,
``nnUNet_results``) and stops when one id has two names. A converter builds the whole dataset in a hidden
sibling folder (``.Dataset..._partial-*``; nnU-Net only lists names starting with ``Dataset``) and renames
it into place at the end, so a crash never leaves a folder that looks like a complete dataset.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from nnunet_pdddpm.demo.dataset import check_dataset_id, check_dataset_name
from nnunet_pdddpm.errors import PDDDPMUserError

__all__ = ["NNUNET_FOLDER_VARIABLES", "env_folder", "dataset_target", "building_folder"]

NNUNET_FOLDER_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def env_folder(variable: str) -> Path:
    """The folder named by an nnU-Net environment variable; raises when it is unset or empty."""
    value = os.environ.get(variable)
    if not value:
        raise PDDDPMUserError(f"The {variable} environment variable is not set; export {variable}=/path/to/folder "
                              f"(nnU-Net's data folders) first.")
    return Path(value).expanduser()


def dataset_target(raw: Path, dataset_id: int, name: str, overwrite: bool) -> Path:
    """``raw/Dataset{id:03d}_{name}`` after checking that writing it is allowed.

    Refuses an id that another dataset name already uses in any of nnU-Net's folders (nnU-Net could then
    not tell which is meant; ``--overwrite`` does not change that), and an existing folder of the same name
    unless ``overwrite``.
    """
    check_dataset_id(dataset_id)
    check_dataset_name(name)
    target = raw / f"Dataset{dataset_id:03d}_{name}"
    roots = [raw] + [Path(os.environ[v]) for v in NNUNET_FOLDER_VARIABLES[1:] if os.environ.get(v)]
    for root in roots:
        for other in sorted(root.glob(f"Dataset{dataset_id:03d}_*")):
            if other.name != target.name:
                raise PDDDPMUserError(f"{other} already uses dataset id {dataset_id} and nnU-Net allows one name per "
                                      f"id; pass another -d or remove that dataset.")
    if target.exists() and not overwrite:
        raise PDDDPMUserError(f"{target} already exists; pass --overwrite to replace it, or another -d.")
    return target


@contextlib.contextmanager
def building_folder(target: Path) -> Iterator[Path]:
    """Yield an empty hidden folder next to ``target``; on success it becomes ``target``, replacing any old one.

    On an exception the hidden folder is deleted and ``target`` is left as it was. A killed process leaves
    only the hidden ``.{target.name}.partial-*`` folder, which is safe to delete.
    """
    tmp = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # not tempfile.mkdtemp: its mode 0700 would end up on the dataset
    except OSError as e:
        raise PDDDPMUserError(f"Cannot create folders in {target.parent} ({e.strerror}); check nnUNet_raw.") from None
    try:
        yield tmp
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_folder(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` is moved aside first and deleted afterwards."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
