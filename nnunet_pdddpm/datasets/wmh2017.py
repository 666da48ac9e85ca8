"""The WMH Segmentation Challenge 2017 data (doi 10.34894/AECRSD) as an nnU-Net v2 raw dataset.

Source layout: ``training/`` and ``test/`` hold ``<site>[/<scanner>]/<case>/`` folders with
``pre/FLAIR.nii.gz``, ``pre/T1.nii.gz`` (the T1 already resampled to the FLAIR grid by the organisers)
and ``wmh.nii.gz`` (0 background, 1 WMH, 2 other pathology). The original 2017 training release is such
site folders without ``training/``; a folder of site folders is therefore read as training cases.

Written into ``Dataset{id:03d}_{name}``:

- ``images{Tr,Ts}/{case}_0000.nii.gz`` (FLAIR) and ``_0001`` (T1): byte-for-byte copies, never resampled,
  because the challenge's reference is defined on the FLAIR grid;
- ``labels{Tr,Ts}/{case}.nii.gz``: 1 = WMH, and label 2 mapped to 0: the challenge does not score other
  pathology, so it must not become a class nnU-Net learns;
- ``otherPathology{Tr,Ts}/{case}.nii.gz``: the label-2 voxels (uint8, 1 = other pathology), for
  ``nnunet_pdddpm_evaluate -exclude``, which masks them as the challenge does;
- ``dataset.json`` and ``wmh2017_sources.json`` (each case's source folder).

Training cases go to ``*Tr``, test cases to ``*Ts``. Case ids are the folder path below ``training/`` or
``test/`` joined by ``_`` (``Amsterdam_GE3T_100``), so the 110 test cases of five scanners stay distinct.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunet_pdddpm.datasets.raw_folder import building_folder
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.image_integrity import read_image_header

__all__ = [
    "CHANNEL_NAMES",
    "LABELS",
    "OTHER_PATHOLOGY_FOLDER",
    "WMHCase",
    "check_case_grid",
    "convert_case",
    "find_wmh_cases",
    "convert_wmh2017",
]

logger = logging.getLogger(__name__)

SUBSET_FOLDERS = {"training": "Tr", "test": "Ts"}
# Any name but "CT" gets nnU-Net's per-case z-score normalisation, the right one for MRI.
CHANNEL_NAMES = {"0": "FLAIR", "1": "T1"}
LABELS = {"background": 0, "WMH": 1}
SOURCE_VALUES = {0: "background", 1: "WMH", 2: "other pathology"}
OTHER_PATHOLOGY = 2
OTHER_PATHOLOGY_FOLDER = "otherPathology"  # + "Tr" / "Ts", like nnU-Net's labelsTr / labelsTs
FILE_ENDING = ".nii.gz"
SOURCES_FILE = "wmh2017_sources.json"
LAYOUT = "<site>[/<scanner>]/<case>/ folders, each with pre/FLAIR.nii.gz, pre/T1.nii.gz and wmh.nii.gz"


@dataclass(frozen=True)
class WMHCase:
    """One challenge case: its nnU-Net id, ``"Tr"`` or ``"Ts"``, its folder relative to WMH_ROOT and its files."""

    identifier: str
    subset: str
    source: str
    flair: Path
    t1: Path
    wmh: Path


def find_wmh_cases(root: str | os.PathLike) -> list[WMHCase]:
    """All case folders below ``root/training`` and ``root/test``, training first, each sorted by id.

    ``root`` may also be a ``training`` or ``test`` folder itself, or a folder of site folders (training).
    A case folder is one holding ``pre/FLAIR.nii.gz`` (or ``.nii``); it must also hold ``pre/T1`` and ``wmh``
    and lie at ``<site>/<case>`` or ``<site>/<scanner>/<case>``. Raises :class:`PDDDPMUserError` for a
    folder without cases, a case elsewhere (``-i`` at the wrong level), an incomplete case or two cases
    with one id.
    """
    root = Path(root)
    if not root.is_dir():
        raise PDDDPMUserError(f"-i {root} is not an existing folder; expected the WMH 2017 data with training/ "
                              f"and test/.")
    subset_roots = [(root / name, subset) for name, subset in SUBSET_FOLDERS.items() if (root / name).is_dir()]
    if not subset_roots and root.name in SUBSET_FOLDERS:
        subset_roots = [(root, SUBSET_FOLDERS[root.name])]
    cases = [_make_case(folder, subset_root, root, subset)
             for subset_root, subset in subset_roots or [(root, "Tr")]
             for folder in _case_folders(subset_root)]
    if not cases:
        searched = " and ".join(str(p) for p, _ in subset_roots) if subset_roots else str(root)
        raise PDDDPMUserError(f"No WMH 2017 case folder found in {searched}; expected training/ and/or test/ (or "
                              f"site folders directly) with {LAYOUT}.")
    _check_unique(cases)
    return sorted(cases, key=lambda c: (c.subset != "Tr", c.identifier))


def _case_folders(subset_root: Path) -> Iterator[Path]:
    for dirpath, dirnames, _ in os.walk(subset_root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if _image(here / "pre", "FLAIR") is not None:
            dirnames[:] = []  # a case's own subfolders (pre/, orig/) hold no cases
            yield here


def _image(folder: Path, stem: str) -> Path | None:
    for ending in (".nii.gz", ".nii"):
        if (folder / f"{stem}{ending}").is_file():
            return folder / f"{stem}{ending}"
    return None


def _make_case(folder: Path, subset_root: Path, root: Path, subset: str) -> WMHCase:
    parts = folder.relative_to(subset_root).parts
    if not 2 <= len(parts) <= 3:
        raise PDDDPMUserError(f"Case folder {folder} is not at <site>[/<scanner>]/<case> below {subset_root}; point "
                              f"-i at the folder that holds training/ and test/.")
    files = {"pre/FLAIR": _image(folder / "pre", "FLAIR"), "pre/T1": _image(folder / "pre", "T1"),
             "wmh": _image(folder, "wmh")}
    missing = [f"{name}.nii.gz" for name, path in files.items() if path is None]
    if missing:
        raise PDDDPMUserError(f"Case folder {folder} has no {' and no '.join(missing)}; every case needs "
                              f"pre/FLAIR.nii.gz, pre/T1.nii.gz and wmh.nii.gz.")
    # nnU-Net splits file names at '_' + 4 digits and the file ending; keep ids to letters, digits, '_' and '-'.
    identifier = "_".join(re.sub(r"[^A-Za-z0-9_-]+", "-", part) for part in parts)
    return WMHCase(identifier, subset, folder.relative_to(root).as_posix(), files["pre/FLAIR"], files["pre/T1"],
                   files["wmh"])


def _check_unique(cases: Sequence[WMHCase]) -> None:
    seen: dict[str, WMHCase] = {}
    for case in cases:
        if case.identifier in seen:
            raise PDDDPMUserError(f"Case folders {seen[case.identifier].source} and {case.source} both become case "
                                  f"id {case.identifier}; rename one of them.")
        seen[case.identifier] = case


def check_case_grid(case: WMHCase) -> None:
    """Raise unless FLAIR, T1 and wmh are 3D images of one size and spacing (read from the headers only).

    Size and spacing are what nnU-Net's ``--verify_dataset_integrity`` refuses too (same tolerance,
    ``np.allclose``); a different origin or direction is only logged, as nnU-Net only warns about it.
    """
    headers = {"pre/FLAIR": read_image_header(case.flair), "pre/T1": read_image_header(case.t1),
               "wmh": read_image_header(case.wmh)}
    where = f"Case {case.identifier} ({case.source})"
    flat = [n for n, h in headers.items() if h.GetDimension() != 3 or h.GetNumberOfComponents() != 1]
    if flat:
        raise PDDDPMUserError(f"{where}: {', '.join(flat)} is not a scalar 3D image; expected the challenge's 3D "
                              f"NIfTI files.")
    for what, get in (("size", lambda h: h.GetSize()), ("spacing", lambda h: h.GetSpacing())):
        values = {name: get(h) for name, h in headers.items()}
        if not all(np.allclose(v, values["pre/FLAIR"]) for v in values.values()):
            listed = ", ".join(f"{name} {tuple(round(x, 4) for x in v)}" for name, v in values.items())
            raise PDDDPMUserError(f"{where}: the images' {what}s differ ({listed}); FLAIR, T1 and wmh must share "
                                  f"one grid.")
    for what, get in (("origin", lambda h: h.GetOrigin()), ("direction", lambda h: h.GetDirection())):
        if not all(np.allclose(get(h), get(headers["pre/FLAIR"])) for h in headers.values()):
            logger.warning("%s: FLAIR, T1 and wmh differ in %s; copied as they are.", where, what)


def convert_case(case: WMHCase, folder: Path) -> None:
    """Write one case into the dataset ``folder`` (whose ``images*``, ``labels*`` and mask folders exist)."""
    for channel, source in enumerate((case.flair, case.t1)):
        _copy_as_nii_gz(source, folder / f"images{case.subset}" / f"{case.identifier}_{channel:04d}{FILE_ENDING}")
    image = sitk.ReadImage(str(case.wmh))
    wmh = sitk.GetArrayViewFromImage(image)
    unexpected = sorted(set(np.unique(wmh).tolist()) - set(SOURCE_VALUES))
    if unexpected:
        raise PDDDPMUserError(f"Case {case.identifier}: {case.wmh} holds values {unexpected[:5]} besides 0 "
                              f"(background), 1 (WMH) and 2 (other pathology).")
    _write_mask(wmh == LABELS["WMH"], image, folder / f"labels{case.subset}" / f"{case.identifier}{FILE_ENDING}")
    _write_mask(wmh == OTHER_PATHOLOGY, image,
                folder / f"{OTHER_PATHOLOGY_FOLDER}{case.subset}" / f"{case.identifier}{FILE_ENDING}")


def _copy_as_nii_gz(source: Path, target: Path) -> None:
    """Byte-for-byte copy; an uncompressed ``.nii`` is gzipped, which keeps its header and voxels exactly."""
    if source.name.endswith(".nii.gz"):
        shutil.copyfile(source, target)
    else:
        with open(source, "rb") as src, gzip.open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _write_mask(mask: np.ndarray, like: sitk.Image, target: Path) -> None:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(like)
    sitk.WriteImage(image, str(target), useCompression=True)


def convert_wmh2017(cases: Sequence[WMHCase], target: Path, show_progress: bool = True) -> Path:
    """Write ``cases`` as the nnU-Net raw dataset ``target`` (``$nnUNet_raw/Dataset{id:03d}_{name}``).

    Every case's grid is checked before anything is written; the dataset is built in a hidden folder
    next to ``target`` and renamed into place at the end, replacing an existing ``target`` (callers
    decide whether that is allowed, see :func:`~nnunet_pdddpm.datasets.raw_folder.dataset_target`).
    """
    for case in cases:
        check_case_grid(case)
    with building_folder(target) as folder:
        for subset in SUBSET_FOLDERS.values():
            for kind in ("images", "labels", OTHER_PATHOLOGY_FOLDER):
                (folder / f"{kind}{subset}").mkdir()
        for case in tqdm(cases, desc=target.name, unit="case", disable=not show_progress):
            convert_case(case, folder)
        _write_dataset_json(folder, target.name, cases)
        sources = {c.identifier: {"subset": c.subset, "source": c.source} for c in cases}
        (folder / SOURCES_FILE).write_text(json.dumps(sources, indent=2) + "\n")
    return target


def _write_dataset_json(folder: Path, dataset_name: str, cases: Sequence[WMHCase]) -> None:
    num_training = sum(c.subset == "Tr" for c in cases)
    generate_dataset_json(
        str(folder),
        channel_names=dict(CHANNEL_NAMES),
        labels=dict(LABELS),
        num_training_cases=num_training,
        file_ending=FILE_ENDING,
        dataset_name=dataset_name,
        description=(
            "MICCAI 2017 WMH Segmentation Challenge: FLAIR and T1 (pre/, on the FLAIR grid), copied unchanged. "
            "Label 2 (other pathology) is not a class: it is 0 in labelsTr/labelsTs and kept as a mask in "
            f"{OTHER_PATHOLOGY_FOLDER}Tr/{OTHER_PATHOLOGY_FOLDER}Ts for evaluation with the challenge's exclusion "
            "(nnunet_pdddpm_evaluate -exclude). imagesTs/labelsTs hold the test release."
        ),
        reference="Kuijf et al., IEEE Trans. Med. Imaging 38(11):2556-2568, 2019; data: doi:10.34894/AECRSD",
        license="See the terms of the data release, doi:10.34894/AECRSD.",
        converted_by="nnunet_pdddpm_convert_wmh2017",
        numTest=len(cases) - num_training,
        other_pathology_masks={"Tr": f"{OTHER_PATHOLOGY_FOLDER}Tr", "Ts": f"{OTHER_PATHOLOGY_FOLDER}Ts"},
    )
