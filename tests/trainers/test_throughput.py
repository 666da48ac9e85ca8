"""Training-throughput paths of ``PDDDPMTrainer`` on the CPU: several noise draws per augmented image,
the fused optimiser's device-side skip, and the ``torch.compile`` path nnU-Net takes by default on CUDA."""
import copy

import pytest
import torch
from conftest import make_trainer

from nnunet_pdddpm.trainers.ema import EMA
from nnunet_pdddpm.trainers.update_guard import NonFiniteMonitor, make_adam, step_unless


def _tiny(**attributes):
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    return type("PDDDPMTrainer_tinyTest", (PDDDPMTrainer_tiny,), attributes)


def _capture_inputs(network) -> list:
    seen = []
    network.register_forward_hook(lambda mod, args, out: seen.append([a.detach().clone() for a in args]))
    return seen


def test_noise_draws_split_the_plan_batch_between_images_and_draws(nnunet_root, monkeypatch):
    trainer = make_trainer(nnunet_root, _tiny(noise_draws_per_image=2), monkeypatch)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # make_trainer set 1; the loader below runs in this process
    plan_batch = trainer.configuration_manager.batch_size
    assert plan_batch == 4  # the tiny dataset's 2d plan
    assert (trainer.batch_size, trainer.draws_per_image) == (2, 2)

    loader, _ = trainer.get_dataloaders()  # nnU-Net's real loader and augmentation
    batch = next(loader)
    assert batch["data"].shape[0] == 2
    seen = _capture_inputs(trainer.network)
    torch.manual_seed(0)
    trainer.train_step(batch)
    x, t = seen[0]
    assert x.shape[0] == plan_batch  # images x draws: the network's batch is the plan's
    image_channels = batch["data"].shape[1]
    for i in range(2):  # draws of one image: the same image, different timesteps and noisy masks
        assert torch.equal(x[2 * i, :image_channels], x[2 * i + 1, :image_channels])
        assert torch.equal(x[2 * i, :image_channels], batch["data"][i])
        assert t[2 * i] != t[2 * i + 1]
        assert not torch.equal(x[2 * i, image_channels:], x[2 * i + 1, image_channels:])


def test_more_draws_than_the_plan_batch_never_grow_the_network_batch(nnunet_root, monkeypatch):
    trainer = make_trainer(nnunet_root, _tiny(noise_draws_per_image=3), monkeypatch)
    assert trainer.batch_size == 1 and trainer.draws_per_image == 4  # 4 // 3 images, then 4 // 1 draws
    trainer = make_trainer(nnunet_root, _tiny(noise_draws_per_image=8), monkeypatch)
    assert trainer.batch_size * trainer.draws_per_image == 4


def test_a_loader_batch_shrunk_by_noise_draws_still_forces_foreground(nnunet_root, monkeypatch):
    """nnU-Net forces foreground in the last batch - round(batch (1 - p)) images: with p = 0.33 the plan's batch 4
    forces 1 of 4; a loader batch of 1 would force none (round(0.67) = 1) unless p is raised with the split."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    def forced(trainer) -> int:
        loader = object.__new__(nnUNetDataLoader)  # nnU-Net's own rule, without building a loader
        loader.batch_size, loader.oversample_foreground_percent = (trainer.batch_size,
                                                                   trainer.oversample_foreground_percent)
        return sum(nnUNetDataLoader._oversample_last_XX_percent(loader, i) for i in range(trainer.batch_size))

    plain = make_trainer(nnunet_root, _tiny(), monkeypatch)
    assert (plain.batch_size, plain.oversample_foreground_percent, forced(plain)) == (4, 0.33, 1)
    for draws, expected in ((2, (2, 2, 1)), (4, (1, 4, 1)), (8, (1, 4, 1))):
        trainer = make_trainer(nnunet_root, _tiny(noise_draws_per_image=draws), monkeypatch)
        assert (trainer.batch_size, trainer.draws_per_image, forced(trainer)) == expected
    trainer.oversample_foreground_percent = 0.0
    trainer._set_batch_size_and_oversample()
    assert forced(trainer) == 0  # no oversampling asked, none added


def test_fused_adam_skip_leaves_weights_and_moments_untouched():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16))
    opt = make_adam([p], lr=0.1, weight_decay=1e-5)
    assert opt.param_groups[0]["fused"]  # the CPU has a fused Adam too
    p.grad = torch.randn(16)
    step_unless(opt, torch.tensor(False))
    before = p.detach().clone()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = torch.full((16,), float("nan"))
    step_unless(opt, torch.tensor(True))
    assert torch.equal(p.detach(), before)
    assert all(torch.equal(v, opt.state[p][k]) for k, v in state.items())
    assert int(opt.state[p]["step"]) == 1

    # the same step as torch's plain (unfused) Adam
    q = torch.nn.Parameter(before.clone())
    plain = torch.optim.Adam([q], lr=0.1, weight_decay=1e-5)
    plain.load_state_dict(copy.deepcopy(opt.state_dict()))  # (state_dict shares the moment tensors)
    plain.param_groups[0]["fused"] = None
    g = torch.randn(16)
    p.grad, q.grad = g.clone(), g.clone()
    step_unless(opt, torch.tensor(False))
    step_unless(plain, torch.tensor(False))  # unfused: decided on the host
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
    q_before = q.detach().clone()
    q.grad = torch.full((16,), float("nan"))
    step_unless(plain, torch.tensor(True))  # unfused skip
    assert torch.equal(q.detach(), q_before) and int(plain.state[q]["step"]) == 2


def test_ema_skip_flag_leaves_shadow_and_count_untouched():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    shadow = {k: v.clone() for k, v in ema.shadow.state_dict().items()}
    ema.update(model, skip=torch.tensor(True))
    assert ema.num_updates == 0
    assert all(torch.equal(shadow[k], v) for k, v in ema.shadow.state_dict().items())
    ema.update(model, skip=torch.tensor(False))  # n=0: decay 1/10, float64 reference
    expected = shadow["weight"].double() * 0.1 + model.weight.detach().double() * 0.9
    torch.testing.assert_close(ema.shadow.weight.double(), expected, rtol=1e-6, atol=1e-7)
    assert ema.num_updates == 1


def test_monitor_reads_flags_one_step_late():
    messages = []
    monitor = NonFiniteMonitor(lambda: 2, messages.append)
    monitor.record(torch.tensor(True), torch.tensor(float("nan")))
    assert monitor.in_a_row == 0 and not messages  # not read yet
    monitor.record(torch.tensor(False), torch.tensor(1.0))
    assert monitor.in_a_row == 1 and "step skipped" in messages[0]
    monitor.flush()
    assert monitor.in_a_row == 0


@pytest.mark.slow
def test_compiled_training_step_matches_eager(nnunet_root, monkeypatch):
    """nnU-Net compiles the network by default on CUDA; on the CPU the same path is forced here.

    The first step's loss equals the eager one (same weights, batch and seed); the second, after a
    fused-Adam update from slightly different gradients, is close; EMA and checkpoints see the plain module.
    """
    from torch._dynamo import OptimizedModule

    eager = make_trainer(nnunet_root, _tiny(), monkeypatch)
    compiled = make_trainer(nnunet_root, _tiny(_do_i_compile=lambda self: True), monkeypatch)
    assert isinstance(compiled.network, OptimizedModule)
    compiled._bare_network().load_state_dict(eager.network.state_dict())
    compiled.ema.shadow.load_state_dict(eager.ema.shadow.state_dict())

    g = torch.Generator().manual_seed(1)
    batches = [{"data": torch.randn(4, 1, 40, 40, generator=g),
                "target": (torch.rand(4, 1, 40, 40, generator=g) > 0.7).to(torch.int16)} for _ in range(2)]
    losses = {}
    for name, trainer in (("eager", eager), ("compiled", compiled)):
        torch.manual_seed(2)
        losses[name] = [float(trainer.train_step(b)["loss"]) for b in batches]
        trainer.nonfinite.flush()
    assert losses["compiled"][0] == pytest.approx(losses["eager"][0], rel=1e-4)
    assert losses["compiled"][1] == pytest.approx(losses["eager"][1], rel=1e-2)
    assert compiled.ema.num_updates == 2
    assert not any(k.startswith("_orig_mod") for k in compiled._bare_network().state_dict())
