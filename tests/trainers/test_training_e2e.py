"""Both trainers through the real ``nnUNetv2_train`` on a tiny generated dataset (CPU), plus ``--c``."""
import json
import math
import shutil

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from conftest import DATASET_ID, model_folder, nnunet_env, run_cli

from nnunet_pdddpm.errors import PDDDPMUserError


def test_attention_unet_pre_segmenter_trains_like_nnunet(trained):
    fold = model_folder(trained, "PDDDPMAttUNetTrainer_tiny") / "fold_0"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "validation/summary.json"):
        assert (fold / name).is_file(), name
    assert list(fold.glob("training_log_*.txt"))
    # A few iterations do not make a good model, but its foreground must already be chosen by the image: it holds
    # more lesion voxels than a random choice of as many voxels would (hypergeometric mean + 4 standard deviations).
    # A model that predicts nothing, everything, or noise fails this.
    cases = [c["metrics"]["1"] for c in load_json(fold / "validation" / "summary.json")["metric_per_case"]]
    tp, predicted, lesion = (sum(c[k] for c in cases) for k in ("TP", "n_pred", "n_ref"))
    voxels = sum(c["TP"] + c["FP"] + c["FN"] + c["TN"] for c in cases)
    chance = predicted * lesion / voxels
    sd = math.sqrt(chance * (1 - lesion / voxels) * (voxels - predicted) / (voxels - 1))
    assert sd > 0 and tp > chance + 4 * sd, (tp, chance, sd)


def test_denoiser_checkpoint_is_safe_and_complete(trained):
    fold = model_folder(trained, "PDDDPMTrainer_tiny") / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert ckpt["trainer_name"] == "PDDDPMTrainer_tiny"
    assert ckpt["current_epoch"] == 2
    settings = ckpt["pdddpm"]
    assert settings["diffusion"] == {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                                     "prediction_type": "epsilon", "clip_sample": True,
                                     "output_activation": "identity"}
    assert settings["labels"] == [0, 1] and settings["num_image_channels"] == 1
    assert settings["sampling"] == {"t_prime": 20, "ensemble_size": 2, "sampler": "ddim", "steps": 4,
                                    "soft_pre_segmentation": False, "uncertainty": "variance",
                                    "pre_segmentation_weight": 0.0, "lesion_gate": False,
                                    "mirrored_members": False}
    assert settings["denoiser_kwargs"]["features_per_stage"][0] == 8
    # EMA weights differ from the raw weights after training, and both cover the whole network
    assert ckpt["ema"]["num_updates"] == 2 * 4
    assert ckpt["ema"]["weights"].keys() == ckpt["network_weights"].keys()
    assert any(not torch.equal(ckpt["ema"]["weights"][k], ckpt["network_weights"][k])
               for k in ckpt["network_weights"])
    assert (fold / "progress.png").is_file() and list(fold.glob("training_log_*.txt"))


def test_final_validation_uses_the_pre_segmenter_and_writes_summary(trained):
    val = model_folder(trained, "PDDDPMTrainer_tiny") / "fold_0" / "validation"
    info = json.loads((val / "pdddpm_validation.json").read_text())
    assert "PDDDPMAttUNetTrainer_tiny" in info["method"]
    summary = load_json(val / "summary.json")
    cases = [c["prediction_file"] for c in summary["metric_per_case"]]
    assert len(cases) == 2 and all(c.endswith(".nii.gz") for c in cases)
    assert sorted(p.name for p in (val / "uncertainty").iterdir()) == sorted(
        c.split("/")[-1].replace(".nii.gz", "_uncertainty.nii.gz") for c in cases)


def test_continue_training_resumes_from_a_checkpoint(trained, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(trained, root)
    fold = model_folder(root, "PDDDPMTrainer_tiny") / "fold_0"
    best = torch.load(fold / "checkpoint_best.pth", weights_only=True)
    (fold / "checkpoint_final.pth").unlink()
    out = run_cli(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "PDDDPMTrainer_tiny", "-device", "cpu",
                   "--c"], nnunet_env(root))
    final = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert final["current_epoch"] == 2
    # epochs after the best checkpoint were trained again, continuing its EMA and optimiser
    resumed_steps = (2 - best["current_epoch"]) * 4
    assert final["ema"]["num_updates"] == best["ema"]["num_updates"] + resumed_steps
    if resumed_steps:
        assert f"Epoch {best['current_epoch']}" in out.stdout


def _trainer(trained, monkeypatch, dataset_json=None, data_identifier=None):
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    for k, v in nnunet_env(trained).items():
        if k.startswith("nnUNet"):
            monkeypatch.setenv(k, v)
    pre = trained / "preprocessed" / "Dataset991_Tiny"
    plans = load_json(pre / "nnUNetPlans.json")
    if data_identifier:
        plans["configurations"]["2d"]["data_identifier"] = data_identifier
    plans["continue_training"] = False
    return PDDDPMTrainer_tiny(plans, "2d", 0, dataset_json or load_json(pre / "dataset.json"), torch.device("cpu"))


def test_unpreprocessed_configuration_is_refused_before_training(trained, monkeypatch):
    trainer = _trainer(trained, monkeypatch, data_identifier="nnUNetPlans_missing")
    with pytest.raises(PDDDPMUserError, match="run nnUNetv2_plan_and_preprocess"):
        trainer.initialize()


def test_region_based_datasets_are_refused(trained, monkeypatch):
    dj = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole": [1, 2], "core": 2},
          "regions_class_order": [1, 2], "numTraining": 8, "file_ending": ".nii.gz"}
    with pytest.raises(PDDDPMUserError, match="region-based"):
        _trainer(trained, monkeypatch, dataset_json=dj)
