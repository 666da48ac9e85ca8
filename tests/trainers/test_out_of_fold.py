"""Out-of-fold pre-segmentations in denoiser training: each case is segmented by the fold that held it out."""
import shutil

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from conftest import DATASET, DATASET_ID, make_trainer, model_folder, nnunet_env, run_cli

from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.errors import PDDDPMUserError


def _oof_trainer_class():
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    return type("PDDDPMTrainer_tinyOOF", (PDDDPMTrainer_tiny,), {
        "diffusion_config": DiffusionConfig(prediction_type="sample", output_activation="softmax"),
        "pre_segmentation_errors": 1.0, "pre_segmentation_source": "out_of_fold",
        "pre_segmenter_trainers": ("PDDDPMAttUNetTrainer_tiny",)})


def _fold_logits(folder, fold: int, data: torch.Tensor) -> torch.Tensor:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (fold,), "checkpoint_final.pth")
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    with torch.no_grad():
        out = predictor.network.eval()(data)
    return out[0] if isinstance(out, (list, tuple)) else out


@pytest.mark.slow
def test_each_training_case_is_segmented_by_the_fold_that_held_it_out(trained, tmp_path, monkeypatch):
    env = tmp_path / "root"  # a copy: the extra pre-segmenter folds must not change what other tests see
    shutil.copytree(trained, env)
    # only fold 0 of the pre-segmenter exists: refused, naming the folds to train
    with pytest.raises(PDDDPMUserError, match=r"missing in .*: folds 1, 2, 3, 4\. Train them first"):
        make_trainer(env, _oof_trainer_class(), monkeypatch)
    for fold in (1, 2, 3, 4):
        run_cli(["nnUNetv2_train", str(DATASET_ID), "2d", str(fold), "-tr", "PDDDPMAttUNetTrainer_tiny", "-device",
                 "cpu"], nnunet_env(env))
    trainer = make_trainer(env, _oof_trainer_class(), monkeypatch)
    assert trainer.pdddpm_settings()["training"]["pre_segmentation_source"] == "out_of_fold"
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    monkeypatch.setattr(trainer, "draw_timesteps", lambda b: torch.zeros((b,), dtype=torch.long))
    seen = []
    trainer.network.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    trainer.train_step(batch)
    mask = seen[0][:, batch["data"].shape[1]:] > 0  # at index 0, x_t is x_0 up to noise of sd 0.006

    splits = load_json(env / "preprocessed" / DATASET / "splits_final.json")
    holder = {key: fold for fold, split in enumerate(splits) for key in split["val"]}
    folder = model_folder(env, "PDDDPMAttUNetTrainer_tiny")
    for i, key in enumerate(batch["keys"]):
        assert holder[key] != 0  # a training case of fold 0...
        logits = _fold_logits(folder, holder[key], batch["data"][i:i + 1])  # ...segmented by the fold that held it out
        expected = torch.cat([logits.argmax(1) == 0, logits.argmax(1) == 1])
        assert torch.equal(mask[i], expected)
