"""A non-finite loss skips the update (weights and EMA untouched) and stops training if it persists."""
import numpy as np
import pytest
import torch
from conftest import make_trainer

from nnunet_pdddpm.errors import PDDDPMUserError


@pytest.fixture
def trainer(nnunet_root, monkeypatch):
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    return make_trainer(nnunet_root, PDDDPMTrainer_tiny, monkeypatch)


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
    assert trainer.optimizer.state[next(iter(trainer.network.parameters()))]["step"] == 1  # Adam untouched
    trainer.train_step(_batch(False))  # flags are read one step late: this step accounts for the bad one
    assert trainer.nonfinite.in_a_row == 1
    trainer.nonfinite.flush()  # a finite step resets the counter
    assert trainer.nonfinite.in_a_row == 0
    assert trainer.ema.num_updates == 2


def test_epoch_loss_ignores_skipped_steps(trainer):
    outputs = [trainer.train_step(_batch(False)), trainer.train_step(_batch(True)), trainer.train_step(_batch(False))]
    expected = float(np.mean([float(outputs[0]["loss"]), float(outputs[2]["loss"])]))
    trainer.on_train_epoch_end(outputs)
    assert trainer.logger.get_value("train_losses", trainer.current_epoch) == pytest.approx(expected, rel=1e-6)
    assert trainer.nonfinite.in_a_row == 0


def test_persistent_nonfinite_loss_stops_training_with_a_clear_message(trainer):
    trainer.max_consecutive_nonfinite = 3
    for _ in range(3):
        trainer.train_step(_batch(True))
    # the third bad step is read one step late: at the next step or at the end of the epoch
    with pytest.raises(PDDDPMUserError, match="non-finite in 3 consecutive steps"):
        trainer.train_step(_batch(True))
