"""Shared fixtures: a tiny nnU-Net dataset, planned, preprocessed and trained through the real CLIs (once).

The trained models are the short variants ``PDDDPMAttUNetTrainer_tiny`` (pre-segmenter) and
``PDDDPMTrainer_tiny`` (denoiser) on the 2d configuration, on the CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import make_dataset  # noqa: E402

DATASET_ID = 991
DATASET = "Dataset991_Tiny"


def nnunet_env(root: Path) -> dict:
    """Environment for nnU-Net subprocesses rooted at ``root`` (2 cores: one worker each)."""
    from nnunet_pdddpm.discovery import ENV_VAR, extended_value

    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1",
               nnUNet_compile="false", PYTHONUNBUFFERED="1")
    env[ENV_VAR] = extended_value(env.get(ENV_VAR))
    return env


def run_cli(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script from this environment's bin folder; fail with its output if it fails."""
    exe = Path(sys.executable).parent / args[0]
    proc = subprocess.run([str(exe), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory) -> Path:
    """Raw dataset + nnUNetv2_plan_and_preprocess (2d and 3d_fullres)."""
    root = tmp_path_factory.mktemp("nnunet")
    make_dataset(root / "raw", DATASET_ID)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "3d_fullres", "-np", "1", "-npfp",
             "1", "--verify_dataset_integrity"], nnunet_env(root))
    return root


@pytest.fixture(scope="session")
def trained(nnunet_root) -> Path:
    """Both tiny models trained on fold 0 of the 2d configuration through ``nnUNetv2_train``."""
    env = nnunet_env(nnunet_root)
    run_cli(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "PDDDPMAttUNetTrainer_tiny", "-device", "cpu"], env)
    run_cli(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "PDDDPMTrainer_tiny", "-device", "cpu"], env)
    return nnunet_root


@pytest.fixture(scope="module")
def env(trained):
    """The trained tiny models' root, with nnU-Net's folder variables pointing at it for the module's tests."""
    mp = pytest.MonkeyPatch()
    for k, v in nnunet_env(trained).items():
        if k.startswith("nnUNet"):
            mp.setenv(k, v)
    yield trained
    mp.undo()


def model_folder(root: Path, trainer: str, configuration: str = "2d") -> Path:
    return root / "results" / DATASET / f"{trainer}__nnUNetPlans__{configuration}"


def make_trainer(root: Path, trainer_class, monkeypatch, configuration: str = "2d"):
    """An initialised trainer of ``trainer_class`` on the CPU, fold 0 of the preprocessed tiny dataset."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    for k, v in nnunet_env(root).items():
        if k.startswith("nnUNet"):
            monkeypatch.setenv(k, v)
    pre = root / "preprocessed" / DATASET
    plans = load_json(pre / "nnUNetPlans.json")
    plans["continue_training"] = False  # nnU-Net's run_training sets this key; the constructor pops it
    trainer = trainer_class(plans, configuration, 0, load_json(pre / "dataset.json"), torch.device("cpu"))
    trainer.initialize()
    return trainer
