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
    assert default.pdddpm_settings()["training"] == {"timestep_range": 1000, "pre_segmentation_errors": 0.0,
                                                     "pre_segmentation_source": "simulated",
                                                     "pre_segmentation_soft": False,
                                                     "pre_segmentation_mirroring": False, "warm_start": None,
                                                     "warm_start_source": None}


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


SOFTMAX = DiffusionConfig(prediction_type="sample", output_activation="softmax")


def test_softmax_output_is_fitted_with_nnunet_dice_ce_and_sampled_as_a_mask(nnunet_root, monkeypatch):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss

    from nnunet_pdddpm.diffusion import model_output

    trainer = make_trainer(nnunet_root, _tiny(diffusion_config=SOFTMAX), monkeypatch)
    assert isinstance(trainer.loss, DC_and_CE_loss)  # nnU-Net's own segmentation loss, no deep supervision
    outputs = []
    trainer.network.register_forward_hook(lambda m, args, out: outputs.append(out.detach().clone()))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    loss = trainer.train_step(batch)["loss"]
    expected = trainer.loss(outputs[0].float(), batch["target"].long())  # tiny labels are 0/1: indices = values
    assert torch.allclose(loss, expected, atol=1e-6)
    # the sampler's model output is 2 softmax - 1: in [-1, 1], channels summing to 2 - K
    logits = torch.randn(3, 2, 5, 5, dtype=torch.float64) * 4
    x0 = model_output(SOFTMAX, logits)
    assert torch.allclose(x0, 2 * torch.softmax(logits, 1) - 1)
    assert torch.allclose(x0.sum(1), torch.zeros(3, 5, 5, dtype=torch.float64))
    assert model_output(DiffusionConfig(), logits) is logits
    with pytest.raises(ValueError, match="needs prediction_type 'sample'"):
        DiffusionConfig(output_activation="softmax")


def test_pre_segmenter_source_diffuses_the_trained_pre_segmenters_own_mask(env, monkeypatch):
    from conftest import model_folder
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    trainer = make_trainer(env, _tiny(diffusion_config=SOFTMAX, pre_segmentation_errors=1.0,
                                      pre_segmentation_source="pre_segmenter"), monkeypatch)
    assert trainer.pdddpm_settings()["training"]["pre_segmentation_source"] == "pre_segmenter"
    batch, x, _ = _one_step(trainer, monkeypatch, timesteps=0)
    # independently: nnU-Net's predictor loads the tiny attention U-Net of fold 0 and segments the same patches
    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder(env, "PDDDPMAttUNetTrainer_tiny")), (0,),
                                                   "checkpoint_final.pth")
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    with torch.no_grad():
        logits = predictor.network.eval()(batch["data"])
    logits = logits[0] if isinstance(logits, (list, tuple)) else logits
    expected = encode_labels(logits.argmax(1, keepdim=True), [0, 1]) > 0
    seen = x[:, batch["data"].shape[1]:] > 0  # at index 0, x_t is x_0 up to noise of sd 0.006
    assert torch.equal(seen, expected)


def test_pre_segmenter_source_without_a_trained_pre_segmenter_says_what_to_train(nnunet_root, monkeypatch):
    with pytest.raises(PDDDPMUserError, match="train the pre-segmenter first"):
        make_trainer(nnunet_root, _tiny(diffusion_config=SOFTMAX, pre_segmentation_errors=0.5,
                                        pre_segmentation_source="pre_segmenter",
                                        pre_segmenter_trainers=("NoSuchTrainer",)), monkeypatch)


@pytest.mark.parametrize("attributes, message", [
    ({"t_prime": 300, "timestep_range": 200}, "timestep_range must lie between t_prime"),
    ({"timestep_range": 2000}, "timestep_range must lie between t_prime"),
    ({"pre_segmentation_errors": 0.5}, "needs diffusion_config.prediction_type 'sample'"),
    ({"pre_segmentation_errors": 1.5, "diffusion_config": DiffusionConfig(prediction_type="sample")},
     "fraction of samples"),
    ({"pre_segmentation_source": "oracle"}, "must be one of simulated, pre_segmenter, out_of_fold"),
])
def test_invalid_training_options_are_refused_in_one_sentence(nnunet_root, monkeypatch, attributes, message):
    with pytest.raises(PDDDPMUserError, match=message):
        make_trainer(nnunet_root, _tiny(**attributes), monkeypatch)
