"""A table of bad inputs through the real command entry points.

Each row spoils one thing (a file, a folder, a flag, a checkpoint, the environment) and runs the console
script's ``main`` as the script would. Every row must end with exit status 2, exactly one ``error:`` line on
stderr naming the problem, no traceback, and no output file that looks complete. ``test_bad_inputs.py`` and
``test_checkpoint_*.py`` check the same failures' exact wording; this table checks the contract across all of
them at once, so a new failure mode is one row.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATASET, DATASET_ID, model_folder

from nnunet_pdddpm.cli import convert_wmh2017, evaluate, experiment, make_demo_dataset, predict

PRE, DENOISER = "PDDDPMAttUNetTrainer_tiny", "PDDDPMTrainer_tiny"
MODELS = ["-d", str(DATASET_ID), "-c", "2d", "-tr", DENOISER, "-preseg_tr", PRE, "-f", "0", "-device", "cpu"]
SAMPLING = ["-npp", "1", "-nps", "1", "-t_prime", "10", "-ensemble_size", "2", "--disable_progress_bar"]
COMPLETE = (".nii.gz", ".nii", ".json", ".csv", ".npz", ".png", ".pth")


@dataclass
class Ctx:
    """Paths a row may spoil: copies of the test images, labels and model folders, and the output places."""

    tmp: Path
    images: Path
    labels: Path
    results: Path
    out: Path

    def predict(self, *extra: str) -> list[str]:
        return ["-i", str(self.images), "-o", str(self.out), *MODELS, *SAMPLING, *extra]

    def evaluate(self, *extra: str, pred: Path | None = None) -> list[str]:
        return ["-ref", str(self.labels), "-pred", str(pred or self.labels), "-o", str(self.out / "summary.json"),
                *extra]

    def checkpoint(self, trainer: str) -> Path:
        return self.results / DATASET / f"{trainer}__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rewrite(path: Path, change) -> None:
    image = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(image)))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


def _poke(value):
    def change(a):
        a = a.astype(np.float32)
        a[2, 5, 5] = value
        return a
    return change


def _four_d(path: Path) -> None:
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), image.affine), path)


def _renamed_ending(folder: Path) -> None:
    first = sorted(folder.iterdir())[0]
    sitk.WriteImage(sitk.ReadImage(str(first)), str(first)[: -len(".gz")])
    first.unlink()


def _file(path: Path) -> Path:
    path.write_text("a user's file")
    return path


def _prediction_folder(c: Ctx, change: Callable[[Path], None]) -> Path:
    pred = c.tmp / "pred"
    shutil.copytree(c.labels, pred)
    change(pred)
    return pred


def _wmh_like(c: Ctx) -> Path:
    """A folder that is not the WMH challenge's layout (nnU-Net raw images instead)."""
    return c.images


@dataclass
class Row:
    id: str
    main: Callable
    argv: Callable[[Ctx], list[str]]
    says: str
    env: dict | None = None


ROWS = [
    # ---- predict: folders
    Row("predict -i missing", predict.main, lambda c: ["-i", str(c.tmp / "nowhere"), *c.predict()[2:]],
        "does not exist"),
    Row("predict -i is a file", predict.main, lambda c: ["-i", str(_file(c.tmp / "f")), *c.predict()[2:]],
        "is a file, not a folder"),
    Row("predict -i empty", predict.main, lambda c: ["-i", str(_empty(c)), *c.predict()[2:]],
        "holds no images ending with .nii.gz"),
    Row("predict -o is a file", predict.main, lambda c: ["-i", str(c.images), "-o", str(_file(c.tmp / "f")),
                                                        *MODELS, *SAMPLING], "is an existing file, not a folder"),
    Row("predict -o under a file", predict.main,
        lambda c: ["-i", str(c.images), "-o", str(_file(c.tmp / "f") / "o"), *MODELS, *SAMPLING], "which is a file"),
    Row("predict -o_uncertainty under a file", predict.main,
        lambda c: c.predict("-o_uncertainty", str(_file(c.tmp / "f") / "u")), "which is a file"),
    Row("predict -o equals -i", predict.main, lambda c: ["-i", str(c.images), "-o", str(c.images), *MODELS,
                                                        *SAMPLING], "-i"),
    # ---- predict: images
    Row("predict truncated image", predict.main, lambda c: (_cut(c.images / "case_008_0000.nii.gz"), c.predict())[1],
        "is incomplete"),
    Row("predict NaN voxel", predict.main,
        lambda c: (_rewrite(c.images / "case_009_0000.nii.gz", _poke(np.nan)), c.predict())[1], "NaN or infinite"),
    Row("predict +inf voxel", predict.main,
        lambda c: (_rewrite(c.images / "case_009_0000.nii.gz", _poke(np.inf)), c.predict())[1], "NaN or infinite"),
    Row("predict 4D channel file", predict.main, lambda c: (_four_d(c.images / "case_008_0000.nii.gz"),
                                                            c.predict())[1], "is a 4D image"),
    Row("predict other file ending", predict.main, lambda c: (_renamed_ending(c.images), c.predict())[1],
        "do not end with the dataset's file ending"),
    Row("predict extra channel", predict.main,
        lambda c: (shutil.copy(c.images / "case_008_0000.nii.gz", c.images / "case_008_0001.nii.gz"),
                   c.predict())[1], "channel"),
    Row("predict not an image", predict.main,
        lambda c: ((c.images / "case_008_0000.nii.gz").write_bytes(b"not a nifti at all"), c.predict())[1],
        "case_008_0000.nii.gz"),
    # ---- predict: models and flags
    Row("predict -d unknown name", predict.main, lambda c: _replace(c.predict(), "-d", "NoSuchName"),
        "is neither a dataset ID"),
    Row("predict -d unknown id", predict.main, lambda c: _replace(c.predict(), "-d", "777"), "777"),
    Row("predict -tr unknown", predict.main, lambda c: _replace(c.predict(), "-tr", "NoSuchTrainer"),
        "NoSuchTrainer"),
    Row("predict -preseg_tr unknown", predict.main, lambda c: _replace(c.predict(), "-preseg_tr", "NoSuchTrainer"),
        "NoSuchTrainer"),
    Row("predict -f not trained", predict.main, lambda c: _replace(c.predict(), "-f", "3"), "fold_3"),
    Row("predict -c not trained", predict.main, lambda c: _replace(c.predict(), "-c", "3d_fullres"), "3d_fullres"),
    Row("predict denoiser as pre-segmenter", predict.main, lambda c: _replace(c.predict(), "-preseg_tr", DENOISER),
        "is a PD-DDPM denoiser, not a segmentation model"),
    Row("predict truncated denoiser checkpoint", predict.main,
        lambda c: (_cut(c.checkpoint(DENOISER)), c.predict())[1], "central directory); it is truncated"),
    Row("predict truncated pre-segmenter checkpoint", predict.main,
        lambda c: (_cut(c.checkpoint(PRE)), c.predict())[1], "central directory); it is truncated"),
    Row("predict -t_prime above T", predict.main, lambda c: _replace(c.predict(), "-t_prime", "2000"), "-t_prime"),
    Row("predict -t_prime negative", predict.main, lambda c: _replace(c.predict(), "-t_prime", "-1"), "-t_prime"),
    Row("predict -ensemble_size 0", predict.main, lambda c: _replace(c.predict(), "-ensemble_size", "0"),
        "-ensemble_size"),
    Row("predict per-class map of no uncertainty", predict.main,
        lambda c: c.predict("-uncertainty", "none", "--uncertainty_per_class"), "--uncertainty_per_class needs"),
    Row("predict -steps above T'", predict.main, lambda c: c.predict("-steps", "11"), "exceeds T'=10"),
    Row("predict -num_parts 0", predict.main, lambda c: c.predict("-num_parts", "0"), "-num_parts must be at least 1"),
    Row("predict -part_id outside", predict.main, lambda c: c.predict("-num_parts", "2", "-part_id", "2"),
        "-part_id"),
    Row("predict nnUNet_results unset", predict.main, lambda c: c.predict(), "nnUNet_results is not set",
        env={"nnUNet_results": None}),
    # ---- experiment
    Row("experiment tprime -values above T", experiment.main,
        lambda c: ["tprime", *MODELS, "-i", str(c.images), "-ref", str(c.labels), "-o", str(c.out), "-values", "20",
                   "2000"], "-values 2000"),
    Row("experiment -ref missing", experiment.main,
        lambda c: ["table1", *MODELS, "-i", str(c.images), "-ref", str(c.tmp / "nowhere"), "-o", str(c.out)],
        "nowhere"),
    Row("experiment -d unknown", experiment.main,
        lambda c: ["table1", *_replace(MODELS, "-d", "NoSuchName"), "-i", str(c.images), "-ref", str(c.labels), "-o",
                   str(c.out)], "is neither a dataset ID"),
    # ---- evaluate
    Row("evaluate -ref missing", evaluate.main, lambda c: _replace(c.evaluate(), "-ref", str(c.tmp / "nowhere")),
        "nowhere"),
    Row("evaluate prediction missing a case", evaluate.main,
        lambda c: c.evaluate(pred=_prediction_folder(c, lambda p: (p / "case_009.nii.gz").unlink())), "case_009"),
    Row("evaluate truncated prediction", evaluate.main,
        lambda c: c.evaluate(pred=_prediction_folder(c, lambda p: _cut(p / "case_008.nii.gz"))), "is incomplete"),
    Row("evaluate NaN in a prediction", evaluate.main,
        lambda c: c.evaluate(pred=_prediction_folder(c, lambda p: _rewrite(p / "case_009.nii.gz", _poke(np.nan)))),
        "NaN or infinite"),
    Row("evaluate label outside -l", evaluate.main,
        lambda c: c.evaluate("-l", "1", pred=_prediction_folder(c, lambda p: _rewrite(
            p / "case_009.nii.gz", lambda a: (a * 3).astype(a.dtype)))), "3"),
    Row("evaluate -o under a file", evaluate.main,
        lambda c: _replace(c.evaluate(), "-o", str(_file(c.tmp / "f") / "s.json")), "which is a file"),
    Row("evaluate -exclude missing", evaluate.main, lambda c: c.evaluate("-exclude", str(c.tmp / "nowhere")),
        "nowhere"),
    # ---- convert_wmh2017 and make_demo_dataset
    Row("convert_wmh2017 not the layout", convert_wmh2017.main,
        lambda c: ["-i", str(_wmh_like(c)), "-d", "555", "--disable_progress_bar"], "WMH"),
    Row("convert_wmh2017 -i missing", convert_wmh2017.main,
        lambda c: ["-i", str(c.tmp / "nowhere"), "-d", "555", "--disable_progress_bar"], "nowhere"),
    Row("make_demo_dataset existing id", make_demo_dataset.main, lambda c: ["-d", str(DATASET_ID)], str(DATASET_ID)),
]


def _empty(c: Ctx) -> Path:
    folder = c.tmp / "empty"
    folder.mkdir()
    return folder


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def _looks_complete(c: Ctx) -> list[Path]:
    found = [p for p in c.out.rglob("*") if p.is_file() and p.name.endswith(COMPLETE)] if c.out.exists() else []
    new_datasets = [p for p in (c.tmp / "raw").iterdir() if DATASET not in p.name] if (c.tmp / "raw").exists() else []
    return found + new_datasets


@pytest.fixture
def ctx(env, tmp_path, monkeypatch) -> Ctx:
    images, labels = tmp_path / "images", tmp_path / "labels"
    shutil.copytree(env / "raw" / DATASET / "imagesTs", images)
    shutil.copytree(env / "raw" / DATASET / "labelsTs", labels)
    results = tmp_path / "results"
    for trainer in (PRE, DENOISER):
        shutil.copytree(model_folder(env, trainer), results / DATASET / model_folder(env, trainer).name)
    monkeypatch.setenv("nnUNet_results", str(results))
    raw = tmp_path / "raw"
    shutil.copytree(env / "raw" / DATASET, raw / DATASET)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    return Ctx(tmp_path, images, labels, results, tmp_path / "out")


def test_the_table_is_large_enough():
    assert len(ROWS) >= 25 and len({r.id for r in ROWS}) == len(ROWS)
    assert {r.main for r in ROWS} == {predict.main, experiment.main, evaluate.main, convert_wmh2017.main,
                                      make_demo_dataset.main}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, ctx: Ctx, capsys, monkeypatch):
    for key, value in (row.env or {}).items():
        monkeypatch.delenv(key) if value is None else monkeypatch.setenv(key, value)
    argv = row.argv(ctx)
    with pytest.raises(SystemExit) as exit_info:
        row.main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, out + err
    assert "Traceback" not in err + out, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert row.says in errors[0], errors[0]
    assert _looks_complete(ctx) == []
