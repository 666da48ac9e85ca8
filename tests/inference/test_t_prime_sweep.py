"""Automatic T': the final validation's sweep on the tiny trained models, and predict using what it stored."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import model_folder, nnunet_env, run_cli
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

from nnunet_pdddpm.inference.pre_segmentation import ModelPreSegmenter
from nnunet_pdddpm.inference.predictor import PDDDPMPredictor
from nnunet_pdddpm.inference.settings import SamplingSettings
from nnunet_pdddpm.inference.t_prime_sweep import T_PRIME_FILE, foreground_dice, read_auto_t_prime

CPU = torch.device("cpu")


def test_final_validation_stores_the_best_t_prime_of_its_sweep(env):
    folder = model_folder(env, "PDDDPMTrainer_tiny")
    sweep = json.loads((folder / "fold_0" / T_PRIME_FILE).read_text())
    assert sweep["candidates"] == [5, 10, 20] and len(sweep["dice"]) == 3
    assert sweep["t_prime"] == sweep["candidates"][int(np.argmax(np.round(sweep["dice"], 6)))]
    # the same Dice, recomputed independently from the saved checkpoints on the fold's validation cases
    predictor = PDDDPMPredictor(device=CPU, allow_tqdm=False, sampling=SamplingSettings(
        ensemble_size=2, sampler=sweep["sampling"]["sampler"], steps=sweep["sampling"]["steps"]))
    predictor.initialize_from_trained_model_folder(str(folder), [0])
    pre_segmentation = ModelPreSegmenter(str(model_folder(env, "PDDDPMAttUNetTrainer_tiny")), [0],
                                         "checkpoint_final.pth", CPU)
    pre = env / "preprocessed" / "Dataset991_Tiny" / "nnUNetPlans_2d"
    ds = infer_dataset_class(str(pre))(str(pre), sweep["cases"])
    for t_prime, stored in zip(sweep["candidates"], sweep["dice"]):
        sampling = dataclasses.replace(predictor.sampling, t_prime=t_prime)
        scores = []
        for key in sweep["cases"]:
            data, seg, _, props = ds.load_case(key)
            probs = predictor.predict_case(torch.from_numpy(np.asarray(data[:])), props, key, sampling,
                                           pre_segmentation).probabilities
            scores.append(foreground_dice(probs, torch.from_numpy(np.asarray(seg[0])).long()))
        assert np.mean(scores) == pytest.approx(stored, abs=1e-6)


def test_predict_uses_the_stored_t_prime_unless_told_otherwise(env, tmp_path):
    results = tmp_path / "results"
    src = model_folder(env, "PDDDPMTrainer_tiny")
    dst = results / "Dataset991_Tiny" / src.name
    shutil.copytree(src, dst)
    pre = model_folder(env, "PDDDPMAttUNetTrainer_tiny")
    shutil.copytree(pre, dst.parent / pre.name)
    sweep = json.loads((dst / "fold_0" / T_PRIME_FILE).read_text())
    sweep.update(candidates=[7, 13], dice=[0.1, 0.2], t_prime=13)
    (dst / "fold_0" / T_PRIME_FILE).write_text(json.dumps(sweep))

    predictor = PDDDPMPredictor(device=CPU, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(dst), [0])
    assert predictor.sampling.t_prime == 13 and T_PRIME_FILE in predictor.t_prime_source
    explicit = PDDDPMPredictor(device=CPU, allow_tqdm=False, sampling=SamplingSettings(t_prime=4))
    explicit.initialize_from_trained_model_folder(str(dst), [0])
    assert explicit.sampling.t_prime == 4

    cli_env = dict(nnunet_env(env), nnUNet_results=str(results))
    images = env / "raw" / "Dataset991_Tiny" / "imagesTr"
    args = ["nnunet_pdddpm_predict", "-i", str(images), "-o", str(tmp_path / "out"), "-d", "991", "-c", "2d",
            "-f", "0", "-tr", "PDDDPMTrainer_tiny", "-preseg_tr", "PDDDPMAttUNetTrainer_tiny", "-device", "cpu",
            "--disable_progress_bar", "-ensemble_size", "1"]
    auto = run_cli(args + ["-num_parts", "8", "-part_id", "0"], cli_env)
    assert "T'=13 (from the validation sweep" in auto.stdout
    paper = run_cli(args + ["-num_parts", "8", "-part_id", "1", "-t_prime", "300"], cli_env)
    assert "T'=300 (from -t_prime)" in paper.stdout


def test_several_folds_take_the_best_of_the_mean_curve(tmp_path):
    for fold, dice in ((0, [0.5, 0.7, 0.6]), (1, [0.5, 0.6, 0.8])):
        (tmp_path / f"fold_{fold}").mkdir()
        (tmp_path / f"fold_{fold}" / T_PRIME_FILE).write_text(json.dumps(
            {"candidates": [100, 200, 300], "dice": dice, "t_prime": [100, 200, 300][int(np.argmax(dice))]}))
    assert read_auto_t_prime(str(tmp_path), [0, 1])[0] == 300  # mean 0.5, 0.65, 0.7
    assert read_auto_t_prime(str(tmp_path), [0])[0] == 200
    assert read_auto_t_prime(str(tmp_path), [0, 2]) is None  # fold 2 has no sweep: the trainer's T'


def test_foreground_dice_is_the_brute_force_count():
    probs = torch.zeros(3, 4, 4)
    probs[0] = 1
    probs[1, :2, :2], probs[0, :2, :2] = 2, 0
    seg = torch.zeros(4, 4, dtype=torch.long)
    seg[:2, :1] = 1
    seg[3, 3] = 2
    # class 1: pred 4 voxels, ref 2, overlap 2 -> 2*2/6; class 2: pred 0, ref 1 -> 0
    assert foreground_dice(probs, seg) == pytest.approx((4 / 6 + 0) / 2)
