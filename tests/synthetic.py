"""A tiny NIfTI dataset in nnU-Net raw format: bright ellipsoid 'lesions' in noisy volumes.

Small enough that nnU-Net plans, preprocesses and trains on a CPU in seconds; geometry is
deliberately non-trivial (anisotropic spacing, shifted origin) so export is checked for real.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING = (0.9, 0.9, 3.0)  # SimpleITK (x, y, z)
ORIGIN = (-20.0, 13.5, 7.0)


def make_case(rng: np.random.Generator, shape=(10, 36, 40), num_labels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) arrays in SimpleITK's (z, y, x) order; with ``num_labels`` > 2 each ellipsoid gets a label
    in 1 .. num_labels - 1 and a brightness of its own (100 + 60 x label)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    label = np.zeros(shape, np.uint8)
    for _ in range(rng.integers(1, 4)):
        c = [rng.uniform(2, shape[0] - 3), rng.uniform(6, shape[1] - 7), rng.uniform(6, shape[2] - 7)]
        r = [rng.uniform(1.2, 2.5), rng.uniform(3, 6), rng.uniform(3, 6)]
        value = 1 if num_labels == 2 else int(rng.integers(1, num_labels))
        label[((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1] = value
    image = 100 + 60 * label + rng.normal(0, 12, shape)
    return image.astype(np.float32), label


def write(array: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    sitk.WriteImage(img, str(path))


def make_dataset(raw: Path, dataset_id: int = 991, name: str = "Tiny", num_train: int = 8, num_test: int = 2,
                 seed: int = 0, num_labels: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num_train + num_test):
        image, label = make_case(rng, num_labels=num_labels)
        split = "Tr" if i < num_train else "Ts"
        case = f"case_{i:03d}"
        write(image, folder / f"images{split}" / f"{case}_0000.nii.gz")
        write(label, folder / f"labels{split}" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "FLAIR"}, "labels": {"background": 0, **{f"lesion{k}" if num_labels > 2 else "lesion": k
                                                            for k in range(1, num_labels)}},
        "numTraining": num_train, "file_ending": ".nii.gz"}))
    return folder
