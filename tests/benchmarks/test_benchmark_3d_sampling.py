"""``benchmarks/benchmark_3d_sampling.py`` on the tiny dataset's 3d_fullres plans: the table, NFE and FLOPs."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_3d_sampling_benchmark_prints_cost_per_case_and_evaluation(nnunet_root, tmp_path):
    from conftest import DATASET_ID, nnunet_env

    out = tmp_path / "sample.json"
    env = nnunet_env(nnunet_root)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.benchmark_3d_sampling", "-d", str(DATASET_ID),
                           "-c", "3d_fullres", "-tr", "PDDDPMTrainer_tiny", "-device", "cpu", "--cases", "2",
                           "--t_prime", "10", "--steps", "2", "--ensemble", "2", "--warmup", "0", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "GFLOP per denoiser evaluation" in proc.stdout and "paper s/case (extrapolated)" in proc.stdout
    payload = json.loads(out.read_text())
    assert len(payload["patch_size"]) == 3 and payload["gflop_per_evaluation"] > 0
    assert 0 < payload["estimated_activation_gib_per_sample"] < payload["peak_memory_gib"]
    assert len(payload["rows"]) == 2
    for row in payload["rows"]:
        assert row["nfe"] == row["patches"] * 2 * 2  # ensemble 2 x 2 DDIM steps per patch
        assert row["paper_nfe"] == row["patches"] * 5 * 300
        assert row["seconds"] > 0 and row["paper_s"] == row["s_per_eval"] * row["paper_nfe"]
