"""A second table of bad inputs: the ones that could pass silently (exit 0 with a damaged file or a wrong number).

Same contract as ``test_fuzz_table.py``: each row spoils one thing and runs the console script's ``main``; it must
end with exit status 2, exactly one ``error:`` line naming the problem, no traceback, and no output that looks
complete. Failed writes are injected where a full disk shows: SimpleITK's writer raising ``OSError(ENOSPC)``,
the same writer returning normally with a truncated file (what ITK's NIfTI writer does on a full disk), and
``fsync`` raising ``ENOSPC``. Outside the table: ``--continue_prediction`` over a damaged output predicts it
again, and a lock of a dead process is taken over.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATASET, DATASET_ID, model_folder, nnunet_env, run_cli

from nnunet_pdddpm.cli import evaluate, predict
from nnunet_pdddpm.image_integrity import scan_voxels
from nnunet_pdddpm.io_utils import LOCK_FILE, output_folder_lock
from nnunet_pdddpm.output_names import CASE_SCORES_FILE

PRE, DENOISER = "PDDDPMAttUNetTrainer_tiny", "PDDDPMTrainer_tiny"
DENOISER_ONLY = ["-d", str(DATASET_ID), "-c", "2d", "-tr", DENOISER, "-f", "0", "-device", "cpu"]
MODELS = [*DENOISER_ONLY, "-preseg_tr", PRE]
SAMPLING = ["-npp", "1", "-nps", "1", "-t_prime", "10", "-ensemble_size", "2", "--disable_progress_bar"]
COMPLETE = (".nii.gz", ".nii", ".json", ".csv", ".npz", ".pkl")
# nnU-Net's predict_from_files records the run's settings in -o before the first case, and the scores of each
# sampled case are recorded as it finishes sampling; they describe the run, they do not claim a case's files
RUN_RECORDS = {"dataset.json", "plans.json", "predict_from_raw_data_args.json", CASE_SCORES_FILE}
CASES = ("case_008", "case_009")
SHAPE = (10, 36, 40)  # the test images, SimpleITK's (z, y, x)


@dataclass
class Ctx:
    tmp: Path
    images: Path
    labels: Path
    results: Path
    out: Path
    holders: list = field(default_factory=list)

    def predict(self, *extra: str, models: list[str] = MODELS) -> list[str]:
        return ["-i", str(self.images), "-o", str(self.out), *models, *SAMPLING, *extra]

    def evaluate(self, *extra: str, pred: Path | None = None) -> list[str]:
        return ["-ref", str(self.labels), "-pred", str(pred or self.labels), "-o", str(self.out / "summary.json"),
                *extra]


# ---------------------------------------------------------------- spoilers


def _rewrite(path: Path, change, dtype=np.float32) -> None:
    image = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(image).astype(dtype)))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


def _poke(value):
    def change(a):
        a[2, 5, 5] = value
        return a
    return change


def _second_channel(c: Ctx, change: Callable[[sitk.Image], None]) -> list[str]:
    """Declare two channels in the denoiser's dataset.json and give case_008 a second channel off its grid."""
    dataset_json = c.results / DATASET / model_folder(c.tmp, DENOISER).name / "dataset.json"
    spec = json.loads(dataset_json.read_text())
    spec["channel_names"] = {"0": "FLAIR", "1": "T1"}
    dataset_json.write_text(json.dumps(spec))
    image = sitk.ReadImage(str(c.images / "case_008_0000.nii.gz"))
    change(image)
    sitk.WriteImage(image, str(c.images / "case_008_0001.nii.gz"))
    return c.predict()


def _shift_origin(image: sitk.Image) -> None:
    image.SetOrigin(tuple(o + 5.0 for o in image.GetOrigin()))


def _flip_direction(image: sitk.Image) -> None:
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _broken_link(c: Ctx) -> list[str]:
    target = c.images / "case_008_0000.nii.gz"
    target.unlink()
    target.symlink_to(c.tmp / "moved_away.nii.gz")
    return c.predict()


def _preseg(c: Ctx, spoil: Callable[[np.ndarray], np.ndarray]) -> list[str]:
    folder = c.tmp / "preseg"
    folder.mkdir()
    for case in CASES:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(c.labels / f"{case}.nii.gz")))
        probabilities = np.stack([label == 0, label == 1]).astype(np.float32)
        if case == CASES[0]:
            probabilities = spoil(probabilities)
        np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities)
    return c.predict("-preseg_probabilities", str(folder), models=DENOISER_ONLY)


def _nan_at_one_voxel(p: np.ndarray) -> np.ndarray:
    p[1, 2, 5, 5] = np.nan
    return p


def _three_classes(p: np.ndarray) -> np.ndarray:
    return np.stack([p[0], p[1] / 2, p[1] / 2])


def _folder(c: Ctx, name: str, source: Path, change: Callable[[Path], None]) -> Path:
    folder = c.tmp / name
    shutil.copytree(source, folder)
    change(folder)
    return folder


def _uncertainty(c: Ctx, value: float) -> Path:
    folder = c.tmp / "unc"
    folder.mkdir()
    for case in CASES:
        reference = sitk.ReadImage(str(c.labels / f"{case}.nii.gz"))
        array = np.full(SHAPE, 0.1, np.float32)
        if case == CASES[0]:
            array[2, 5, 5] = value
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        sitk.WriteImage(image, str(folder / f"{case}_uncertainty.nii.gz"))
    return folder


def _probabilities(c: Ctx, scale: float) -> Path:
    folder = c.tmp / "prob"
    folder.mkdir()
    for case in CASES:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(c.labels / f"{case}.nii.gz")))
        np.savez_compressed(folder / f"{case}.npz",
                            probabilities=scale * np.stack([label == 0, label == 1]).astype(np.float32))
    return folder


def _hold_lock(c: Ctx) -> list[str]:
    """Another process predicting into -o: it holds the folder's lock until the test ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom nnunet_pdddpm.io_utils import output_folder_lock\n"
         "with output_folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n", str(c.out)],
        stdout=subprocess.PIPE, text=True)
    c.holders.append(holder)
    assert holder.stdout.readline().strip() == "held"
    return c.predict()


# ---------------------------------------------------------------- faults of the disk


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _writer_raises_enospc(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(sitk, "WriteImage", _enospc)  # nnU-Net's SimpleITKIO and our maps both write through it


def _writer_truncates(mp: pytest.MonkeyPatch) -> None:
    write = sitk.WriteImage

    def cut_short(image, path, *args, **kwargs):
        write(image, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    mp.setattr(sitk, "WriteImage", cut_short)


def _fsync_enospc(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(os, "fsync", _enospc)


@dataclass
class Row:
    id: str
    main: Callable
    argv: Callable[[Ctx], list[str]]
    says: str
    fault: Callable[[pytest.MonkeyPatch], None] | None = None


ROWS = [
    # ---- writes that fail
    Row("predict writer raises ENOSPC", predict.main, lambda c: c.predict(), "No space left on device",
        _writer_raises_enospc),
    Row("predict writer truncates silently", predict.main, lambda c: c.predict(), "the file read back is incomplete",
        _writer_truncates),
    Row("evaluate fsync raises ENOSPC", evaluate.main, lambda c: c.evaluate(), "No space left on device",
        _fsync_enospc),
    # ---- predict: the input contract
    Row("predict voxel 1e30", predict.main,
        lambda c: (_rewrite(c.images / "case_009_0000.nii.gz", _poke(1e30)), c.predict())[1], "overflows"),
    Row("predict voxel -3e38", predict.main,
        lambda c: (_rewrite(c.images / "case_009_0000.nii.gz", _poke(-3e38)), c.predict())[1], "overflows"),
    Row("predict channels at other origins", predict.main, lambda c: _second_channel(c, _shift_origin),
        "not on one grid: the origin"),
    Row("predict channels in other directions", predict.main, lambda c: _second_channel(c, _flip_direction),
        "not on one grid: the direction"),
    Row("predict channel file a broken link", predict.main, _broken_link, "case_008_0000.nii.gz"),
    Row("predict preseg NaN", predict.main, lambda c: _preseg(c, _nan_at_one_voxel), "NaN or infinite"),
    Row("predict preseg negative", predict.main, lambda c: _preseg(c, lambda p: p * 2 - 1), "outside [0, 1]"),
    Row("predict preseg all zero", predict.main, lambda c: _preseg(c, np.zeros_like), "does not sum to 1"),
    Row("predict preseg wrong class count", predict.main, lambda c: _preseg(c, _three_classes),
        "has 3 classes but the dataset has 2"),
    Row("predict -o in use", predict.main, _hold_lock, "is in use by another prediction (process"),
    # ---- evaluate: the input contract
    Row("evaluate prediction 0.7", evaluate.main,
        lambda c: c.evaluate(pred=_folder(c, "pred", c.labels, lambda p: _rewrite(
            p / "case_009.nii.gz", lambda a: a * 0.7))), "non-integer"),
    Row("evaluate prediction -1", evaluate.main,
        lambda c: c.evaluate(pred=_folder(c, "pred", c.labels, lambda p: _rewrite(
            p / "case_009.nii.gz", _poke(-1), np.int16))), "negative values"),
    Row("evaluate prediction label outside -l", evaluate.main,
        lambda c: c.evaluate("-l", "1", pred=_folder(c, "pred", c.labels, lambda p: _rewrite(
            p / "case_008.nii.gz", _poke(4), np.uint8))), "[4] outside the allowed set"),
    Row("evaluate uncertainty negative", evaluate.main, lambda c: c.evaluate("-unc", str(_uncertainty(c, -0.5))),
        "negative values"),
    Row("evaluate uncertainty NaN", evaluate.main, lambda c: c.evaluate("-unc", str(_uncertainty(c, np.nan))),
        "NaN or infinite"),
    Row("evaluate probabilities not summing to 1", evaluate.main,
        lambda c: c.evaluate("-prob", str(_probabilities(c, 0.5))), "does not sum to 1"),
    Row("evaluate probabilities above 1", evaluate.main,
        lambda c: c.evaluate("-prob", str(_probabilities(c, 3.0))), "outside [0, 1]"),
]


def _looks_complete(c: Ctx) -> list[Path]:
    if not c.out.exists():
        return []
    return [p for p in c.out.rglob("*") if p.is_file() and p.name.endswith(COMPLETE) and p.name not in RUN_RECORDS]


@pytest.fixture
def ctx(env, tmp_path, monkeypatch) -> Ctx:
    images, labels = tmp_path / "images", tmp_path / "labels"
    shutil.copytree(env / "raw" / DATASET / "imagesTs", images)
    shutil.copytree(env / "raw" / DATASET / "labelsTs", labels)
    results = tmp_path / "results"
    for trainer in (PRE, DENOISER):
        shutil.copytree(model_folder(env, trainer), results / DATASET / model_folder(env, trainer).name)
    monkeypatch.setenv("nnUNet_results", str(results))
    c = Ctx(tmp_path, images, labels, results, tmp_path / "out")
    yield c
    for holder in c.holders:
        holder.kill()
        holder.wait()


def test_the_table_covers_every_contract():
    assert len(ROWS) >= 18 and len({r.id for r in ROWS}) == len(ROWS)
    assert {r.main for r in ROWS} == {predict.main, evaluate.main}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, ctx: Ctx, capsys, monkeypatch):
    argv = row.argv(ctx)
    if row.fault is not None:
        row.fault(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        row.main(argv)
    monkeypatch.undo()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, out + err
    assert "Traceback" not in err + out, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert row.says in errors[0], errors[0]
    assert _looks_complete(ctx) == []
    assert not list(ctx.tmp.rglob(".pdddpm_partial")), "a temporary file was left behind"


# ---------------------------------------------------------------- outside the table: runs that must succeed


def test_continue_prediction_predicts_damaged_outputs_again(env, tmp_path):
    root_env = nnunet_env(env)
    images = env / "raw" / DATASET / "imagesTs"
    out = tmp_path / "out"
    argv = ["nnunet_pdddpm_predict", "-i", str(images), "-o", str(out), *MODELS, *SAMPLING, "--save_probabilities"]
    run_cli(argv, root_env)
    segmentation, probabilities = out / "case_008.nii.gz", out / "case_009.npz"
    whole = segmentation.read_bytes()
    segmentation.write_bytes(whole[: len(whole) // 2])
    probabilities.write_bytes(probabilities.read_bytes()[:100])
    kept = out / "uncertainty" / "case_008_uncertainty.nii.gz"
    kept_mtime = kept.stat().st_mtime_ns

    proc = run_cli([*argv, "--continue_prediction"], root_env)

    assert "Predicting again 2 damaged output(s): case_008.nii.gz (" in proc.stdout, proc.stdout
    assert "case_009.npz (it cannot be read" in proc.stdout, proc.stdout
    assert "0 cases already predicted; 2 to go." in proc.stdout
    assert scan_voxels(str(segmentation)).n_voxels == int(np.prod(SHAPE))
    assert np.load(probabilities)["probabilities"].shape == (2, *SHAPE)
    assert kept.stat().st_mtime_ns != kept_mtime  # the whole case is predicted again, uncertainty map included
    assert not (out / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(f"{dead.pid}\n")
    with output_folder_lock(folder):
        assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (folder / LOCK_FILE).exists() and folder.is_dir()
