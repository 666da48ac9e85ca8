"""Checkpoints that load safely but do not fit: the wrong model for the flag, edited metadata, another dataset's
labels, a truncated file. Each is one sentence from the predictor's set-up (before any case is read), not a
``size mismatch`` traceback in the middle of prediction."""
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DATASET, DATASET_ID, model_folder

from nnunet_pdddpm.errors import PDDDPMUserError

PRE, DENOISER = "PDDDPMAttUNetTrainer_tiny", "PDDDPMTrainer_tiny"
CHECKPOINT = Path("fold_0") / "checkpoint_final.pth"


@pytest.fixture
def results(env, tmp_path, monkeypatch) -> Path:
    """A copy of the two model folders conftest trains once per test run, as nnUNet_results (the tests edit their
    checkpoints)."""
    root = tmp_path / "results"
    for trainer in (PRE, DENOISER):
        shutil.copytree(model_folder(env, trainer), root / DATASET / model_folder(env, trainer).name)
    monkeypatch.setenv("nnUNet_results", str(root))
    return root / DATASET


def _make_predictor(tmp_path: Path, env: Path, preseg_tr: str = PRE):
    from nnunet_pdddpm.cli.predict import build_parser, make_predictor

    args = ["-i", str(env / "raw" / DATASET / "imagesTs"), "-o", str(tmp_path / "out"), "-d", str(DATASET_ID),
            "-c", "2d", "-tr", DENOISER, "-preseg_tr", preseg_tr, "-f", "0", "-device", "cpu"]
    return make_predictor(build_parser().parse_args(args))


def _edit(path: Path, change) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)


def _one_sentence(error: PDDDPMUserError, *fragments: str) -> None:
    text = str(error)
    assert "\n" not in text and text.endswith("."), text
    for fragment in fragments:
        assert fragment in text, text


def test_the_untouched_copies_load(results, env, tmp_path):
    predictor = _make_predictor(tmp_path, env)
    assert predictor.pre_segmentation is not None and len(predictor.networks) == 1


def test_a_denoiser_given_as_pre_segmenter_is_named(results, env, tmp_path):
    with pytest.raises(PDDDPMUserError) as e:
        _make_predictor(tmp_path, env, preseg_tr=DENOISER)
    _one_sentence(e.value, "is a PD-DDPM denoiser, not a segmentation model", "-preseg_tr")


def test_denoiser_metadata_that_does_not_fit_its_weights(results, env, tmp_path):
    path = results / f"{DENOISER}__nnUNetPlans__2d" / CHECKPOINT

    def wider(checkpoint):
        kwargs = checkpoint["pdddpm"]["denoiser_kwargs"]
        kwargs["features_per_stage"] = [2 * f for f in kwargs["features_per_stage"]]
    _edit(path, wider)
    with pytest.raises(PDDDPMUserError) as e:
        _make_predictor(tmp_path, env)
    _one_sentence(e.value, str(path), "do not fit the denoiser its metadata describes", "size mismatch")


def test_denoiser_trained_on_other_labels(results, env, tmp_path):
    path = results / f"{DENOISER}__nnUNetPlans__2d" / CHECKPOINT
    _edit(path, lambda checkpoint: checkpoint["pdddpm"].update(labels=[0, 2]))
    with pytest.raises(PDDDPMUserError) as e:
        _make_predictor(tmp_path, env)
    _one_sentence(e.value, str(path), "was trained on the labels [0, 2]", "dataset.json has [0, 1]")


def test_pre_segmenter_weights_of_another_network(results, env, tmp_path):
    path = results / f"{PRE}__nnUNetPlans__2d" / CHECKPOINT

    def cut(checkpoint):
        weights = checkpoint["network_weights"]
        name = next(k for k, v in weights.items() if v.ndim == 4)
        weights[name] = torch.cat([weights[name]] * 2, 1)  # twice the input channels
    _edit(path, cut)
    with pytest.raises(PDDDPMUserError) as e:
        _make_predictor(tmp_path, env)
    _one_sentence(e.value, str(path), "do not fit the network of PDDDPMAttUNetTrainer_tiny", "size mismatch")


@pytest.mark.parametrize("trainer", [DENOISER, PRE])
def test_a_truncated_checkpoint_is_called_truncated(results, env, tmp_path, trainer):
    path = results / f"{trainer}__nnUNetPlans__2d" / CHECKPOINT
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PDDDPMUserError) as e:
        _make_predictor(tmp_path, env)
    _one_sentence(e.value, str(path), "cannot be read", "truncated")
    assert "not written by PDDDPMTrainer" not in str(e.value)
