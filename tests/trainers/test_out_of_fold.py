"""Out-of-fold pre-segmentations in denoiser training: refused, naming the folds to train, while folds are missing.

What the samples then start from (each case segmented by the fold that held it out, hard and soft) is checked in
``test_refiner.py`` on the refiner benchmark's five trained folds.
"""
import shutil

import pytest
from conftest import make_trainer

from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.errors import PDDDPMUserError


def _oof_trainer_class():
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    return type("PDDDPMTrainer_tinyOOF", (PDDDPMTrainer_tiny,), {
        "diffusion_config": DiffusionConfig(prediction_type="sample", output_activation="softmax"),
        "pre_segmentation_errors": 1.0, "pre_segmentation_source": "out_of_fold",
        "pre_segmenter_trainers": ("PDDDPMAttUNetTrainer_tiny",)})


def test_missing_pre_segmenter_folds_are_named_before_training(trained, tmp_path, monkeypatch):
    env = tmp_path / "root"  # a copy: the trainer's folder must not change what other tests see
    shutil.copytree(trained, env)
    # only fold 0 of the pre-segmenter exists: refused, naming the folds to train
    with pytest.raises(PDDDPMUserError, match=r"missing in .*: folds 1, 2, 3, 4\. Train them first"):
        make_trainer(env, _oof_trainer_class(), monkeypatch)
