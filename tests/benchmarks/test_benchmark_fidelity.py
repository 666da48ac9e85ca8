"""``benchmarks/benchmark_fidelity.py`` end to end in quick mode: real training, sampling, the paired table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_mode_trains_samples_and_pairs_against_the_pre_segmenter(refiner_quick):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    work = refiner_quick  # the same tiny dataset, generated and preprocessed once; the models here are its own
    proc = subprocess.run([sys.executable, "-m", "benchmarks.benchmark_fidelity", "-o", str(work), "--quick",
                           "--seeds", "0", "--denoisers", "PDDDPMTrainer_tiny_preseg", "--starts", "hard", "soft"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("pre-segmenter "))
    for column in ("Dice", "ΔDice [95% CI]", "HD95", "lesion F1", "ΔF1 [95% CI]", "AVD %", "err-AUROC", "NFE"):
        assert column in header

    def not_json(constant):
        raise AssertionError(f"fidelity.json holds {constant}")

    payload = json.loads((work / "fidelity.json").read_text(), parse_constant=not_json)
    rows = payload["rows"]
    assert [(r["method"], r["sampler"]) for r in rows] == [
        ("pre-segmenter (softmax uncertainty)", ""), ("PD-DDPM (variance)", "ddim 2 steps"),
        ("PD-DDPM (entropy)", "ddim 2 steps"), ("PD-DDPM (variance)", "ddim 2 steps, soft start"),
        ("PD-DDPM (entropy)", "ddim 2 steps, soft start")]
    pre, pd, pd_entropy, soft, _ = rows
    assert soft["cases"] == 2 and soft["nfe_per_case"] == pd["nfe_per_case"]
    soft_settings = json.loads((work / "sampling" / "seed0" / "PDDDPMAttUNetTrainer_tiny" / "PDDDPMTrainer_tiny_preseg"
                                / "predictions" / "pdddpm_ddim_soft" / "benchmark_settings.json").read_text())
    assert soft_settings["soft_pre_segmentation"] is True
    assert pre["cases"] == pd["cases"] == 2  # one seed x the tiny set's two test cases
    assert pd["denoiser"] == "PDDDPMTrainer_tiny_preseg" and pd["sampler"] == "ddim 2 steps"
    # one ensemble, two uncertainty maps: the segmentation metrics are the same
    assert pd_entropy["dice"] == pd["dice"] and pd_entropy["hd95"] == pd["hd95"]
    assert pd["nfe_per_case"] > pre["nfe_per_case"] > 0
    # the paired difference is the difference of the per-case values it pairs
    per_case = {(r["method"], r["denoiser"]): r["cases"] for r in payload["per_case"]}
    a = per_case[("pre-segmenter (softmax uncertainty)", "")]  # one baseline row, whatever the denoiser
    b = per_case[("PD-DDPM (variance)", "PDDDPMTrainer_tiny_preseg")]
    diffs = [b[c]["dice"] - a[c]["dice"] for c in a]
    assert pd["delta_dice"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-12)
    assert pd["delta_dice_low"] <= pd["delta_dice"] <= pd["delta_dice_high"]
    # seeded training went through nnUNetv2_train, and the pre-segmenter's softmax map was evaluated as uncertainty
    log = (work / "logs" / "train_seed0_PDDDPMAttUNetTrainer_tiny.log").read_text()
    assert "Seeded training: nnunet_pdddpm_seed=0" in log
    # the denoiser trained on the predictions of the pre-segmenter trained just before it
    log = (work / "logs" / "train_seed0_PDDDPMTrainer_tiny_preseg.log").read_text()
    assert "Training on the predictions of the pre-segmenter" in log and "PDDDPMAttUNetTrainer_tiny__" in log
    assert pre["uncertainty_auroc"] is None or 0 <= pre["uncertainty_auroc"] <= 1
    assert (work / "fidelity.csv").read_text().startswith("pre_segmenter,denoiser,method")


def test_out_of_fold_denoiser_brings_its_pre_segmenter_folds_and_pairs_only_with_it():
    from benchmarks.benchmark_fidelity import extra_pre_segmenter_folds, pairs_with

    pre_segmenters = ("nnUNetTrainer_demoCPU", "PDDDPMAttUNetTrainer_demoCPU")
    assert extra_pre_segmenter_folds("PDDDPMTrainer_demoCPU_oof", pre_segmenters) == [
        ("PDDDPMAttUNetTrainer_demoCPU", f) for f in (1, 2, 3, 4)]
    assert extra_pre_segmenter_folds("PDDDPMTrainer_demoCPU_oof", pre_segmenters, folds=2) == [
        ("PDDDPMAttUNetTrainer_demoCPU", 1)]  # --quick's two folds
    for denoiser in ("PDDDPMTrainer_demoCPU", "PDDDPMTrainer_demoCPU_preseg", "nnUNetTrainer_demoCPU"):
        assert extra_pre_segmenter_folds(denoiser, pre_segmenters) == []
    assert pairs_with("PDDDPMTrainer_demoCPU_oof", "PDDDPMAttUNetTrainer_demoCPU")
    assert not pairs_with("PDDDPMTrainer_demoCPU_oof", "nnUNetTrainer_demoCPU")
    assert pairs_with("PDDDPMTrainer_demoCPU", "nnUNetTrainer_demoCPU")
