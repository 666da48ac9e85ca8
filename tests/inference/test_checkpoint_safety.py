"""No checkpoint runs code unless the user opts in (``--trust_checkpoints``, ``nnunet_pdddpm_trust_checkpoints=1``).

A crafted pre-segmenter checkpoint is a real one of the test run with one extra entry whose unpickling
creates a marker file: the harmless stand-in for a payload. nnU-Net's own checkpoints (numpy scalars in the
logger) must still load without any opt-in and predict exactly as nnU-Net's predictor does.
"""
import io
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from conftest import DATASET, DATASET_ID, model_folder, nnunet_env

from nnunet_pdddpm.checkpoints import NNUNET_CHECKPOINT_GLOBALS, TRUST_VARIABLE, load_nnunet_checkpoint
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.pre_segmentation import ModelPreSegmenter

CPU = torch.device("cpu")
PRE = "PDDDPMAttUNetTrainer_tiny"
CHECKPOINT = Path("fold_0") / "checkpoint_final.pth"

# nnU-Net 2.8.1's own trainer and save_checkpoint, a few iterations (nnUNetv2_train has no such short variant)
TRAIN_PLAIN_NNUNET = """
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

if __name__ == "__main__":
    pre = {pre!r}
    plans = load_json(pre + "/nnUNetPlans.json")
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, "2d", 0, load_json(pre + "/dataset.json"), torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
    trainer.run_training()
"""


class _Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _env_with_results(root: Path, results: Path) -> dict:
    env = nnunet_env(root)
    env.update(nnUNet_results=str(results), OMP_NUM_THREADS="1")
    env.pop(TRUST_VARIABLE, None)
    return env


@pytest.fixture(scope="module")
def plain_nnunet(trained, tmp_path_factory) -> Path:
    """A plain ``nnUNetTrainer`` model folder written by nnU-Net itself (its own results root)."""
    results = tmp_path_factory.mktemp("plain") / "results"
    script = TRAIN_PLAIN_NNUNET.format(pre=str(trained / "preprocessed" / DATASET))
    proc = subprocess.run([sys.executable, "-c", script], env=_env_with_results(trained, results),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results / DATASET / "nnUNetTrainer__nnUNetPlans__2d"


@pytest.fixture
def crafted(env, tmp_path):
    """(results root, crafted pre-segmenter folder, marker): the test run's models, the pre-segmenter's final
    checkpoint with a payload added; the denoiser beside it, untouched."""
    results = tmp_path / "results"
    for trainer in (PRE, "PDDDPMTrainer_tiny"):
        shutil.copytree(model_folder(env, trainer), results / DATASET / model_folder(env, trainer).name)
    folder = results / DATASET / model_folder(env, PRE).name
    marker = tmp_path / "payload_ran"
    checkpoint = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    checkpoint["payload"] = _Payload(marker)
    torch.save(checkpoint, folder / CHECKPOINT)
    return results, folder, marker


def _refusal_names(message: str, checkpoint: Path) -> None:
    assert str(checkpoint) in message and "getattr" in message  # the file, and the global it wanted
    assert "--trust_checkpoints" in message and TRUST_VARIABLE in message


# ---------------------------------------------------------------- nnU-Net's checkpoints: allow-list, same results
def test_nnunet_checkpoints_load_with_exactly_the_allow_list(plain_nnunet):
    path = plain_nnunet / CHECKPOINT
    with pytest.raises(Exception, match="numpy"):  # nnU-Net writes numpy scalars: bare weights_only refuses them
        torch.load(path, weights_only=True)
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in NNUNET_CHECKPOINT_GLOBALS}
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) <= allowed
    checkpoint = load_nnunet_checkpoint(path)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert isinstance(checkpoint["logging"]["mean_fg_dice"][0], np.float32)
    with pytest.raises(Exception, match="numpy"):  # the allow-list was scoped to that one load
        torch.load(path, weights_only=True)


def test_numpy_1_checkpoints_load_too(tmp_path):
    """Files written with numpy 1.x name ``numpy.core.multiarray.scalar`` and hold float64 EMA values."""
    buffer = io.BytesIO()
    torch.save({"_best_ema": np.float64(0.5), "logging": {"mean_fg_dice": [np.float32(0.25)]}, "w": torch.ones(2)},
               buffer, _use_new_zipfile_serialization=False)
    (tmp_path / "old.pth").write_bytes(buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = load_nnunet_checkpoint(tmp_path / "old.pth")
    assert loaded["_best_ema"] == 0.5 and loaded["logging"]["mean_fg_dice"] == [0.25]


def test_refusals_name_the_type_and_a_non_checkpoint_is_unreadable(tmp_path):
    marker = tmp_path / "payload_ran"

    class _Shell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"network_weights": {}, "x": _Shell()}, tmp_path / "shell.pth")
    with pytest.raises(PDDDPMUserError, match="it holds posix.system, "):  # torch's blocked-module refusal
        load_nnunet_checkpoint(tmp_path / "shell.pth")
    torch.save({"count": np.int64(3)}, tmp_path / "int.pth")  # a numpy type nnU-Net never writes
    with pytest.raises(PDDDPMUserError, match="it holds numpy.dtypes.Int64DType, "):
        load_nnunet_checkpoint(tmp_path / "int.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(PDDDPMUserError, match="cannot be read"):
        load_nnunet_checkpoint(tmp_path / "text.pth")
    assert not marker.exists()


def test_plain_nnunet_model_predicts_exactly_as_nnunet(plain_nnunet):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    ours = ModelPreSegmenter(str(plain_nnunet), [0], "checkpoint_final.pth", CPU)
    reference = nnUNetPredictor(device=CPU, allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(plain_nnunet), (0,), "checkpoint_final.pth")
    assert ours.predictor.trainer_name == reference.trainer_name == "nnUNetTrainer"
    assert ours.predictor.allowed_mirroring_axes == reference.allowed_mirroring_axes
    data = torch.randn(1, 5, 40, 44, generator=torch.Generator().manual_seed(0))
    logits = reference.predict_logits_from_preprocessed_data(data)
    assert torch.equal(ours.predictor.predict_logits_from_preprocessed_data(data), logits)
    expected = reference.label_manager.apply_inference_nonlin(logits).float()
    assert torch.equal(ours.probabilities(data, {}, None), expected)


# ---------------------------------------------------------------- a crafted checkpoint, everywhere it is loaded
def test_model_pre_segmenter_refuses_crafted_checkpoint(crafted):
    _, folder, marker = crafted
    with pytest.raises(PDDDPMUserError) as refused:
        ModelPreSegmenter(str(folder), [0], "checkpoint_final.pth", CPU)
    _refusal_names(str(refused.value), folder / CHECKPOINT)
    assert not marker.exists()
    ModelPreSegmenter(str(folder), [0], "checkpoint_final.pth", CPU, trust_checkpoints=True)
    assert marker.exists()  # the opt-in does what it says


def _predict_args(inp: Path, out: Path) -> list[str]:
    return ["-i", str(inp), "-o", str(out), "-d", str(DATASET_ID), "-c", "2d", "-tr", "PDDDPMTrainer_tiny",
            "-preseg_tr", PRE, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]


def test_predict_cli_refuses_crafted_pre_segmenter_unless_trusted(crafted, env, tmp_path, monkeypatch):
    from nnunet_pdddpm.cli.predict import build_parser, make_predictor

    results, folder, marker = crafted
    inp = env / "raw" / DATASET / "imagesTs"
    exe = Path(sys.executable).parent / "nnunet_pdddpm_predict"
    proc = subprocess.run([str(exe), *_predict_args(inp, tmp_path / "refused")], env=_env_with_results(env, results),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    _refusal_names(errors[0], folder / CHECKPOINT)
    assert not marker.exists() and not list((tmp_path / "refused").glob("*.nii.gz"))
    # the same command line with the opt-in, up to the loading of both models (in-process: no second start-up)
    monkeypatch.setenv("nnUNet_results", str(results))
    predictor = make_predictor(build_parser().parse_args([*_predict_args(inp, tmp_path / "trusted"),
                                                          "--trust_checkpoints"]))
    assert marker.exists() and predictor.pre_segmentation is not None


def test_experiments_refuse_crafted_pre_segmenter_unless_trusted(crafted, env, tmp_path, monkeypatch):
    from nnunet_pdddpm.cli.experiment import build_parser, make_runner

    results, folder, marker = crafted
    monkeypatch.setenv("nnUNet_results", str(results))
    args = ["table1", "-d", str(DATASET_ID), "-c", "2d", "-tr", "PDDDPMTrainer_tiny", "-preseg_tr", PRE, "-f", "0",
            "-i", str(env / "raw" / DATASET / "imagesTs"), "-ref", str(env / "raw" / DATASET / "labelsTs"),
            "-o", str(tmp_path / "exp"), "-device", "cpu"]
    runner = make_runner(build_parser().parse_args(args))
    assert runner.models.trust_checkpoints is False
    with pytest.raises(PDDDPMUserError) as refused:
        runner.pre_segmentation()
    _refusal_names(str(refused.value), folder / CHECKPOINT)
    assert not marker.exists()
    assert make_runner(build_parser().parse_args([*args, "--trust_checkpoints"])).models.trust_checkpoints
    runner.models = replace(runner.models, trust_checkpoints=True)
    runner.pre_segmentation()
    assert marker.exists()


def _trainer(trainer_class, root: Path, results: Path, monkeypatch):
    """An initialised trainer on the test run's preprocessed data whose results root is ``results``."""
    for key, value in _env_with_results(root, results).items():
        if key.startswith("nnUNet"):
            monkeypatch.setenv(key, value)
    pre = root / "preprocessed" / DATASET
    plans = load_json(pre / "nnUNetPlans.json")
    plans["continue_training"] = False
    trainer = trainer_class(plans, "2d", 0, load_json(pre / "dataset.json"), CPU)
    trainer.initialize()
    return trainer


def test_final_validation_refuses_crafted_pre_segmenter(crafted, env, monkeypatch):
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    results, folder, marker = crafted
    monkeypatch.delenv(TRUST_VARIABLE, raising=False)
    trainer = _trainer(PDDDPMTrainer_tiny, env, results, monkeypatch)
    with pytest.raises(PDDDPMUserError) as refused:
        trainer.perform_actual_validation()
    _refusal_names(str(refused.value), folder / CHECKPOINT)
    assert not marker.exists()


def test_training_pre_segmenter_refuses_crafted_checkpoint_unless_trusted(crafted, env, monkeypatch):
    from nnunet_pdddpm import PDDDPMTrainer_tiny_preseg

    results, folder, marker = crafted
    monkeypatch.delenv(TRUST_VARIABLE, raising=False)
    with pytest.raises(PDDDPMUserError) as refused:
        _trainer(PDDDPMTrainer_tiny_preseg, env, results, monkeypatch)
    _refusal_names(str(refused.value), folder / CHECKPOINT)
    assert not marker.exists()
    monkeypatch.setenv(TRUST_VARIABLE, "1")
    assert _trainer(PDDDPMTrainer_tiny_preseg, env, results, monkeypatch).training_pre_segmenter is not None
    assert marker.exists()


# ---------------------------------------------------------------- our pre-segmenter's checkpoints are plain data
def test_attunet_checkpoints_load_with_plain_weights_only(env):
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        path = model_folder(env, PRE) / "fold_0" / name
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint["trainer_name"] == PRE and isinstance(checkpoint["logging"]["mean_fg_dice"][0], float)
        assert {"network_weights", "optimizer_state", "_best_ema", "current_epoch", "init_args",
                "inference_allowed_mirroring_axes"} <= checkpoint.keys()


def test_attunet_resumes_from_its_own_and_from_nnunet_written_checkpoints(env, tmp_path, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_pdddpm import PDDDPMAttUNetTrainer_tiny

    trainer = _trainer(PDDDPMAttUNetTrainer_tiny, env, tmp_path / "results", monkeypatch)
    trainer.logger.log("mean_fg_dice", np.float32(0.5), 0)
    trainer._best_ema, trainer.current_epoch = np.float32(0.5), 3
    trainer.save_checkpoint(str(tmp_path / "ours.pth"))
    nnUNetTrainer.save_checkpoint(trainer, str(tmp_path / "nnunet.pth"))  # numpy scalars, as nnU-Net writes them
    assert torch.load(tmp_path / "ours.pth", weights_only=True)["_best_ema"] == 0.5
    for name in ("ours.pth", "nnunet.pth"):
        resumed = _trainer(PDDDPMAttUNetTrainer_tiny, env, tmp_path / "results", monkeypatch)
        resumed.load_checkpoint(str(tmp_path / name))
        assert resumed.current_epoch == 4 and resumed._best_ema == 0.5
        assert resumed.logger.get_value("mean_fg_dice", step=0) == 0.5
        for key, value in trainer.network.state_dict().items():
            assert torch.equal(resumed.network.state_dict()[key], value), key
