"""Training options for the PD-DDPM regime change what the denoiser sees as specified (real nnU-Net loader)."""
import pytest
import torch
from conftest import make_trainer

from nnunet_pdddpm.diffusion import DiffusionConfig, encode_labels
from nnunet_pdddpm.errors import PDDDPMUserError


def _tiny(**attributes):
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    return type("PDDDPMTrainer_tinyOption", (PDDDPMTrainer_tiny,), attributes)


def _one_step(trainer, monkeypatch, timesteps=None):
    """One train_step on a batch of nnU-Net's real loader; returns the batch, the network's input and timesteps."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    if timesteps is not None:
        monkeypatch.setattr(trainer, "draw_timesteps", lambda b: torch.full((b,), timesteps, dtype=torch.long))
    seen = []
    trainer.network.register_forward_hook(lambda m, args, out: seen.append([a.detach().clone() for a in args]))
    trainer.train_step(batch)
    x, t = seen[0]
    return batch, x, t


def test_timestep_range_bounds_the_training_timesteps(nnunet_root, monkeypatch):
    trainer = make_trainer(nnunet_root, _tiny(t_prime=20, timestep_range=50), monkeypatch)
    torch.manual_seed(0)
    draws = torch.cat([trainer.draw_timesteps(4) for _ in range(500)])
    assert draws.min() == 0 and draws.max() == 49
    _, _, t = _one_step(trainer, monkeypatch)
    assert (t < 50).all()
    assert trainer.pdddpm_settings()["training"]["timestep_range"] == 50
    default = make_trainer(nnunet_root, _tiny(), monkeypatch)
    assert default.pdddpm_settings()["training"] == {"timestep_range": 1000, "pre_segmentation_errors": 0.0}


def test_without_errors_the_noisy_mask_is_the_ground_truth(nnunet_root, monkeypatch):
    trainer = make_trainer(nnunet_root, _tiny(), monkeypatch)
    batch, x, _ = _one_step(trainer, monkeypatch, timesteps=0)  # at index 0, x_t is x_0 up to noise of sd 0.006
    mask = x[:, batch["data"].shape[1]:]
    assert torch.equal(mask > 0, encode_labels(batch["target"], trainer.labels) > 0)


def test_aware_training_diffuses_simulated_errors_and_targets_the_ground_truth(nnunet_root, monkeypatch):
    trainer = make_trainer(nnunet_root, _tiny(diffusion_config=DiffusionConfig(prediction_type="sample"),
                                              pre_segmentation_errors=1.0), monkeypatch)
    targets = []
    import nnunet_pdddpm.trainers.pdddpm_trainer as module

    real = module.training_target
    monkeypatch.setattr(module, "training_target", lambda *a: targets.append(real(*a)) or targets[-1])
    torch.manual_seed(3)
    batch, x, _ = _one_step(trainer, monkeypatch, timesteps=0)
    truth = encode_labels(batch["target"], trainer.labels)
    seen = (x[:, batch["data"].shape[1]:] > 0).float() * 2 - 1
    assert torch.equal(targets[0], truth)  # the target is the ground truth...
    differs = (seen != truth).flatten(1).any(1)
    assert differs.any()  # ...the input is not, for samples that got an error
    # what the network saw is a one-hot mask (exactly one channel on), built from the given labels
    assert torch.equal((seen > 0).sum(1), torch.ones_like((seen > 0).sum(1)))


@pytest.mark.parametrize("attributes, message", [
    ({"t_prime": 300, "timestep_range": 200}, "timestep_range must lie between t_prime"),
    ({"timestep_range": 2000}, "timestep_range must lie between t_prime"),
    ({"pre_segmentation_errors": 0.5}, "needs diffusion_config.prediction_type 'sample'"),
    ({"pre_segmentation_errors": 1.5, "diffusion_config": DiffusionConfig(prediction_type="sample")},
     "fraction of samples"),
])
def test_invalid_training_options_are_refused_in_one_sentence(nnunet_root, monkeypatch, attributes, message):
    with pytest.raises(PDDDPMUserError, match=message):
        make_trainer(nnunet_root, _tiny(**attributes), monkeypatch)
