"""The PD-DDPM paper's split of the WMH training cases, as nnU-Net's ``splits_final.json``.

Paper, Sec. 3.1: "all cases are randomly assigned into five folds. Then we randomly assign these five folds
into a training set (3-fold), a validation set (1-fold), and a test set (1-fold)." The paper gives no seed,
so the split is made reproducible from ours: the sorted case ids are permuted by
``numpy.random.default_rng(seed)`` and cut into five folds with ``numpy.array_split``; folds 0-2 train,
fold 3 validates, fold 4 tests (a random permutation already makes the assignment of folds random).

``splits_final.json`` holds this one split as its only entry, so it is nnU-Net's fold 0
(``nnUNetv2_train D C 0``); its test cases, in neither ``train`` nor ``val``, are listed in
``paper_test_cases.json`` next to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.io_utils import write_json_atomic

__all__ = ["NUM_FOLDS", "SPLITS_FILE", "TEST_FILE", "PaperSplit", "paper_split", "check_split_target",
           "write_paper_split"]

NUM_FOLDS = 5
SPLITS_FILE = "splits_final.json"
TEST_FILE = "paper_test_cases.json"


@dataclass(frozen=True)
class PaperSplit:
    """Case ids per role (each sorted): 3 folds ``train``, 1 fold ``val``, 1 fold ``test``."""

    seed: int
    train: list[str]
    val: list[str]
    test: list[str]


def paper_split(identifiers: Sequence[str], seed: int) -> PaperSplit:
    """The paper's 3/1/1-fold split of ``identifiers``; the same ids and seed give the same split."""
    ids = sorted(identifiers)
    if len(ids) < NUM_FOLDS:
        raise PDDDPMUserError(f"The paper's split needs at least {NUM_FOLDS} training cases (one per fold); "
                              f"found {len(ids)}.")
    if seed < 0:
        raise PDDDPMUserError(f"-paper_split takes a seed >= 0, got {seed}.")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = [sorted(ids[i] for i in fold) for fold in np.array_split(order, NUM_FOLDS)]
    return PaperSplit(seed, sorted(folds[0] + folds[1] + folds[2]), folds[3], folds[4])


def check_split_target(folder: Path, overwrite: bool) -> None:
    """Refuse to replace an existing split in ``folder`` (``$nnUNet_preprocessed/Dataset...``) unless ``overwrite``."""
    existing = [str(folder / name) for name in (SPLITS_FILE, TEST_FILE) if (folder / name).exists()]
    if existing and not overwrite:
        raise PDDDPMUserError(f"{' and '.join(existing)} already exist(s); pass --overwrite to replace the split.")


def write_paper_split(folder: Path, split: PaperSplit) -> tuple[Path, Path]:
    """Write ``splits_final.json`` (``[{"train", "val"}]``) and ``paper_test_cases.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    splits, test = folder / SPLITS_FILE, folder / TEST_FILE
    write_json_atomic([{"train": split.train, "val": split.val}], splits)
    write_json_atomic({"seed": split.seed, "test": split.test}, test)
    return splits, test
