"""``3d_fullres`` and three labels end to end through the real CLIs: plan and preprocess, train both
short variants, predict with per-class uncertainty and probabilities, evaluate per label.

The dataset is the tests' tiny generator with two lesion labels (each ellipsoid 1 or 2, with its own
brightness), anisotropic spacing (0.9, 0.9, 3.0) mm and a shifted origin, so export is checked in 3D.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import nnunet_env, run_cli
from synthetic import make_dataset

DATASET_ID, DATASET = 992, "Dataset992_Tiny3Labels"
PRE, DENOISER = "PDDDPMAttUNetTrainer_tiny", "PDDDPMTrainer_tiny"


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nnunet3d")
    make_dataset(root / "raw", DATASET_ID, "Tiny3Labels", num_labels=3, seed=3)
    env = nnunet_env(root)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1",
             "--verify_dataset_integrity"], env)
    for trainer in (PRE, DENOISER):
        run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env)
    return root


@pytest.fixture(scope="module")
def predicted(trained_3d) -> Path:
    root = trained_3d
    out = root / "pred"
    run_cli(["nnunet_pdddpm_predict", "-i", str(root / "raw" / DATASET / "imagesTs"), "-o", str(out),
             "-d", str(DATASET_ID), "-c", "3d_fullres", "-tr", DENOISER, "-preseg_tr", PRE, "-f", "0",
             "-device", "cpu", "-npp", "1", "-nps", "1", "-t_prime", "10", "-ensemble_size", "2", "-sampler", "ddim",
             "-steps", "3", "--save_probabilities", "--uncertainty_per_class", "--disable_progress_bar"],
            nnunet_env(root))
    return out


def test_both_trainers_train_3d_and_store_what_they_are(trained_3d):
    results = trained_3d / "results" / DATASET
    for trainer in (PRE, DENOISER):
        assert (results / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth").is_file()
    ckpt = torch.load(results / f"{DENOISER}__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth",
                      map_location="cpu", weights_only=True)
    assert ckpt["pdddpm"]["labels"] == [0, 1, 2]
    assert ckpt["init_args"]["configuration"] == "3d_fullres"
    plans = json.loads((trained_3d / "preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    assert len(plans["configurations"]["3d_fullres"]["patch_size"]) == 3


def test_prediction_has_the_inputs_geometry_and_three_labels(trained_3d, predicted):
    raw = trained_3d / "raw" / DATASET
    seen = set()
    for case in ("case_008", "case_009"):
        image = sitk.ReadImage(str(raw / "imagesTs" / f"{case}_0000.nii.gz"))
        for path in (predicted / f"{case}.nii.gz", predicted / "uncertainty" / f"{case}_uncertainty.nii.gz",
                     *(predicted / "uncertainty" / f"{case}_uncertainty_class{k}.nii.gz" for k in (1, 2))):
            out = sitk.ReadImage(str(path))
            assert out.GetSize() == image.GetSize(), path
            assert np.allclose(out.GetSpacing(), image.GetSpacing()) and np.allclose(out.GetOrigin(), image.GetOrigin())
            assert np.allclose(out.GetDirection(), image.GetDirection())
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted / f"{case}.nii.gz")))
        assert set(np.unique(seg).tolist()) <= {0, 1, 2}
        seen |= set(np.unique(seg).tolist())
        unc = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted / "uncertainty" / f"{case}_uncertainty.nii.gz")))
        per_class = [sitk.GetArrayFromImage(sitk.ReadImage(
            str(predicted / "uncertainty" / f"{case}_uncertainty_class{k}.nii.gz"))) for k in (1, 2)]
        for u in (unc, *per_class):
            assert u.dtype == np.float32 and np.isfinite(u).all() and u.min() >= 0
        # the scalar map is the mean of the per-class variances over all three classes (background included),
        # so it is at most the mean of the foreground ones plus the background's share
        assert (unc <= (per_class[0] + per_class[1] + 0.25) / 3 + 1e-4).all()
        probs = np.load(predicted / f"{case}.npz")["probabilities"]
        assert probs.shape == (3, *seg.shape) and np.allclose(probs.sum(0), 1, atol=1e-4)
        assert (probs.argmax(0) == seg).mean() > 0.99
        with open(predicted / f"{case}.pkl", "rb") as f:
            assert pickle.load(f)["spacing"] is not None
    assert seen >= {0}


def test_evaluation_per_label_and_averaged(trained_3d, predicted, tmp_path):
    raw = trained_3d / "raw" / DATASET
    out = tmp_path / "summary.json"
    proc = run_cli(["nnunet_pdddpm_evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(predicted),
                    "-unc", str(predicted / "uncertainty"), "-prob", str(predicted), "-l", "1", "2", "-o", str(out)],
                   nnunet_env(trained_3d))
    summary = json.loads(out.read_text())
    assert summary["labels"] == [1, 2] and set(summary["mean"]) == {"1", "2"}
    dice = [summary["mean"][k]["dice"] for k in ("1", "2")]
    assert summary["foreground_mean"]["dice"] == pytest.approx(np.nanmean(dice))
    for case in summary["metric_per_case"]:
        assert set(case["metrics"]) == {"1", "2"}
    assert "\nmean " in proc.stdout
