"""``benchmarks/benchmark_training.py`` on the preprocessed tiny dataset: every phase, noise draws, JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_training_benchmark_reports_every_phase_with_noise_draws(nnunet_root, tmp_path):
    from conftest import DATASET_ID, nnunet_env

    out = tmp_path / "train.json"
    env = nnunet_env(nnunet_root)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.benchmark_training", "-d", str(DATASET_ID), "-c", "2d",
                           "-tr", "PDDDPMTrainer_tiny", "-device", "cpu", "--iterations", "3", "--warmup", "1",
                           "--drain", "2", "--draws", "2", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "busy %" in proc.stdout and "images/s" in proc.stdout
    payload = json.loads(out.read_text())
    assert payload["noise_draws_per_image"] == 2 and payload["batch_shape"][0] == 2  # plan batch 4 = 2 x 2
    assert payload["compiled"] is False  # nnU-Net does not compile on the CPU
    rows = {r["phase"]: r for r in payload["rows"]}
    assert set(rows) == {"step only (cached batch)", "loop (synced)", "loop (as run_training)",
                         "data only (queue drained)"}
    for row in rows.values():
        assert row["iterations"] == 3 and row["iterations_per_s"] > 0
        assert row["samples_per_s"] == 2 * row["images_per_s"]
    assert 0 <= rows["loop (synced)"]["wait_pct"] <= 100
    assert 0 < rows["loop (as run_training)"]["busy_pct"] <= 100
    assert rows["step only (cached batch)"]["tflop_per_s"] > 0
