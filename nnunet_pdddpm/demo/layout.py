"""The demo dataset on disk: nnU-Net v2 raw layout, atomic writes, and what a rerun finds.

A case is ``images{Tr,Ts}/{case}_0000.nii.gz`` (FLAIR), ``..._0001.nii.gz`` (T1) and
``labels{Tr,Ts}/{case}.nii.gz``; ``labelsTs`` is not read by nnU-Net and holds the test cases'
reference labels. Every file is renamed into place when complete, ``pdddpm_demo.json`` (the
settings) comes first and ``dataset.json`` last: a folder with a ``dataset.json`` is a whole dataset.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

from nnunet_pdddpm.demo.subject import Subject
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.io_utils import PARTIAL_FOLDER, atomic_path, write_json_atomic

CHANNEL_NAMES = {"0": "FLAIR", "1": "T1"}
LABELS = {"background": 0, "wmh": 1}
FILE_ENDING = ".nii.gz"
SETTINGS_FILE = "pdddpm_demo.json"


def case_files(folder: Path, case_id: str, subset: str) -> list[Path]:
    """The FLAIR, T1 and label paths of one case; ``subset`` is ``"Tr"`` or ``"Ts"``."""
    images = [folder / f"images{subset}" / f"{case_id}_{c:04d}{FILE_ENDING}" for c in range(len(CHANNEL_NAMES))]
    return [*images, folder / f"labels{subset}" / f"{case_id}{FILE_ENDING}"]


def write_case(folder: Path, case_id: str, subset: str, subject: Subject) -> None:
    for array, target in zip((subject.flair, subject.t1, subject.label), case_files(folder, case_id, subset)):
        with atomic_path(target) as tmp:
            sitk.WriteImage(subject.to_sitk(array), tmp, useCompression=True)


def check_id_is_free(root: Path, dataset_id: int, folder_name: str) -> None:
    """nnU-Net refuses two raw folders with one id; catch that now rather than at planning time."""
    for other in root.glob(f"Dataset{dataset_id:03d}_*"):
        if other.name != folder_name:
            raise PDDDPMUserError(f"{other} already uses dataset id {dataset_id}; pass another -d/--dataset_id.")


def claim(folder: Path, settings: dict, expected_files: list[Path]) -> bool:
    """Make ``folder`` ours for ``settings``; True when it already holds the complete dataset (nothing to do).

    Refuses a folder made with other settings or not by this generator rather than mixing datasets.
    An incomplete folder of ours loses its ``dataset.json`` and any temporary files of a killed run
    (their names end in ``.nii.gz`` too, so nnU-Net would take them for cases).
    """
    settings_file = folder / SETTINGS_FILE
    if settings_file.is_file():
        with open(settings_file) as f:
            if json.load(f) != settings:
                raise PDDDPMUserError(
                    f"{folder} holds a demo dataset made with other settings; delete it or pass another "
                    "-d/--dataset_id."
                )
        if (folder / "dataset.json").is_file() and all(p.is_file() for p in expected_files):
            return True
        (folder / "dataset.json").unlink(missing_ok=True)
    elif folder.exists() and any(folder.iterdir()):
        raise PDDDPMUserError(f"{folder} exists and was not made by this generator; pass another -d/--dataset_id.")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"*/{PARTIAL_FOLDER}"):
        shutil.rmtree(stale)
    write_json_atomic(settings, settings_file)
    return False


def write_dataset_json(folder: Path, num_train: int, num_test: int) -> None:
    """nnU-Net's own writer, into a scratch folder, then renamed into place (it writes in place otherwise)."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".dataset_json.") as scratch:
        generate_dataset_json(
            scratch,
            channel_names=dict(CHANNEL_NAMES),
            labels=dict(LABELS),
            num_training_cases=num_train,
            file_ending=FILE_ENDING,
            dataset_name=folder.name,
            description=(
                "Synthetic white-matter hyperintensities on FLAIR and T1 with 3 mm axial slices, made by "
                "nnunet_pdddpm.demo from the MNI ICBM152 2009c template shipped with nilearn; for demos and tests. "
                "imagesTs/labelsTs hold the test cases and their reference labels."
            ),
            reference="Fonov et al., NeuroImage 54(1):313-327, 2011 (MNI ICBM152 2009c template).",
            license=(
                "Synthetic data derived from the MNI ICBM152 2009c template, Copyright (C) 1993-2009 Louis Collins, "
                "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University; "
                "use, copy and distribution permitted provided this notice is kept."
            ),
            converted_by="nnunet_pdddpm.demo.make_demo_dataset",
            numTest=num_test,
        )
        os.replace(Path(scratch) / "dataset.json", folder / "dataset.json")
