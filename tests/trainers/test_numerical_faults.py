"""A non-finite loss skips the update (weights and EMA untouched) and stops training if it persists."""
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from conftest import nnunet_env

from nnunet_pdddpm.errors import PDDDPMUserError


@pytest.fixture
def trainer(nnunet_root, monkeypatch):
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    for k, v in nnunet_env(nnunet_root).items():
        if k.startswith("nnUNet"):
            monkeypatch.setenv(k, v)
    pre = nnunet_root / "preprocessed" / "Dataset991_Tiny"
    plans = load_json(pre / "nnUNetPlans.json")
    plans["continue_training"] = False
    t = PDDDPMTrainer_tiny(plans, "2d", 0, load_json(pre / "dataset.json"), torch.device("cpu"))
    t.initialize()
    return t


def _batch(bad: bool):
    data = torch.randn(2, 1, 40, 40)
    if bad:
        data[0, 0, 3, 3] = float("nan")
    return {"data": data, "target": (torch.rand(2, 1, 40, 40) > 0.8).to(torch.int16)}


def test_nonfinite_loss_skips_the_step_and_keeps_weights(trainer):
    trainer.train_step(_batch(False))
    weights = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    ema = {k: v.clone() for k, v in trainer.ema.shadow.state_dict().items()}
    out = trainer.train_step(_batch(True))
    assert torch.isnan(torch.as_tensor(out["loss"]))
    assert all(torch.equal(weights[k], v) for k, v in trainer.network.state_dict().items())
    assert all(torch.equal(ema[k], v) for k, v in trainer.ema.shadow.state_dict().items())
    assert trainer.ema.num_updates == 1
    trainer.train_step(_batch(False))  # a finite step resets the counter
    assert trainer._nonfinite_in_a_row == 0


def test_persistent_nonfinite_loss_stops_training_with_a_clear_message(trainer):
    trainer.max_consecutive_nonfinite = 3
    for _ in range(2):
        trainer.train_step(_batch(True))
    with pytest.raises(PDDDPMUserError, match="non-finite in 3 consecutive steps"):
        trainer.train_step(_batch(True))
