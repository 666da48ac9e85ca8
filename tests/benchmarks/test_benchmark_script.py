"""``benchmarks/benchmark_sampling.py`` end to end on the CPU: synthetic (table and JSON) and on trained models."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_quick_run_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.benchmark_sampling", "--synthetic", "--quick",
                           "-device", "cpu", "--ablation", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("variant"))
    for column in ("s/case", "NFE/case", "GFLOP/eval", "TFLOP/s", "% bf16 peak", "peak mem GiB", "Dice"):
        assert column in header

    payload = json.loads(out.read_text())
    rows = {r["variant"]: r for r in payload["rows"]}
    assert set(rows) >= {"pre-segmenter", "vanilla DDPM T=1000 x2 (3 steps)", "PD-DDPM T'=300 x2 ddpm (3 steps)",
                         "PD-DDPM T'=300 x2 ddim 2 steps", "PD-DDPM T'=300 x2 dpm++ 3 steps",
                         "path: plain (diffusers step)", "path: tensor step", "path: tensor step + channels_last"}
    for row in payload["rows"]:
        # the table's columns from what was timed and counted: seconds per case the mean of the timed runs, TFLOP/s
        # the denoiser's FLOPs (NFE x GFLOP per evaluation) plus the pre-segmenter's over that time
        assert row["seconds_per_case"] == pytest.approx(np.mean(row["seconds"])) and row["gflop_per_eval"] > 0
        denoiser_tflop = row["nfe_per_case"] * row["gflop_per_eval"] / 1e3
        assert row["tflop_per_s"] * row["seconds_per_case"] >= denoiser_tflop * (1 - 1e-9)
        assert row["peak_fraction_pct"] is None  # no bf16 peak for a CPU
        assert row["dice"] == pytest.approx(np.nanmean(row["dice_per_case"]))
    ddpm = rows["PD-DDPM T'=300 x2 ddpm (3 steps)"]
    assert ddpm["nfe_per_case"] == 4 * 2 * 3  # 4 patches x 2 members x 3 steps
    assert rows["PD-DDPM T'=300 x2 ddim 2 steps"]["nfe_per_case"] == 4 * 2 * 2
    # the tensor step is the diffusers step: identical probabilities on the CPU
    assert rows["path: tensor step"]["max_abs_dprob_vs_plain"] == 0
    assert rows["path: tensor step + channels_last"]["max_abs_dprob_vs_plain"] < 1e-4
    setup = payload["setups"][0]
    assert setup["attention"] and setup["estimated_activation_bytes_per_sample"] > 0


@pytest.mark.slow
def test_dataset_mode_on_the_tiny_trained_models(trained, tmp_path):
    """The same script on real checkpoints (the shared ``trained`` fixture): preprocessing, export geometry, Dice."""
    from conftest import DATASET, DATASET_ID, nnunet_env

    out = tmp_path / "bench.json"
    raw = trained / "raw" / DATASET
    env = nnunet_env(trained)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.benchmark_sampling", "-d", str(DATASET_ID), "-c", "2d",
                           "-tr", "PDDDPMTrainer_tiny", "-preseg_tr", "PDDDPMAttUNetTrainer_tiny", "-f", "0",
                           "-i", str(raw / "imagesTs"), "-ref", str(raw / "labelsTs"), "-device", "cpu", "--quick",
                           "--cases", "1", "--variants", "preseg,pdddpm,ddim", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 4  # pre-segmenter, ddpm, ddim 2 and 3 steps
    for row in rows.values():
        assert row["seconds_per_case"] == pytest.approx(np.mean(row["seconds"]))
        assert len(row["dice_per_case"]) == 1 and row["dice"] == pytest.approx(row["dice_per_case"][0])
    # one 40x40 patch per slice, 10 slices, 2 members, 3 steps
    assert rows["PD-DDPM T'=300 x2 ddpm (3 steps)"]["nfe_per_case"] == 10 * 2 * 3


def test_wmh_preset_is_the_default_trainer_on_a_wmh_sized_scan():
    """The ``wmh`` preset measures what a user gets: PDDDPMTrainer's denoiser, one patch per 200x240 slice."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    from benchmarks.synthetic import NUM_IMAGE_CHANNELS, PRESETS, synthetic_denoiser, synthetic_plans
    from nnunet_pdddpm import PDDDPMTrainer

    pm, cm, _ = synthetic_plans("wmh")
    slices, *slice_shape = PRESETS["wmh"]["case"]
    padded = [max(s, p) for s, p in zip(slice_shape, cm.patch_size)]
    steps = compute_steps_for_sliding_window(padded, cm.patch_size, 0.5)
    assert slices * len(steps[0]) * len(steps[1]) == 56
    ours = synthetic_denoiser("wmh", cm)
    default = PDDDPMTrainer.build_network_architecture(pm, cm, NUM_IMAGE_CHANNELS, 2)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in default.parameters()]
