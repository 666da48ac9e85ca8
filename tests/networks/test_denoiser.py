"""The time-conditioned denoiser, built from nnU-Net-style configurations (2D and anisotropic 3D, odd patch sizes)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.networks import (
    TimeConditionedUNet,
    build_denoiser,
    build_denoiser_from_kwargs,
    denoiser_kwargs_from_plans,
)
from nnunet_pdddpm.networks.blocks import SelfAttentionBlock

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)  # the He initialisation draws from the global generator: make every test deterministic


def make_configuration(dim: int, network_class_name: str = PLAIN_UNET) -> ConfigurationManager:
    """A small configuration as nnU-Net's ExperimentPlanner writes it into nnUNetPlans.json."""
    if dim == 2:
        patch, kernels, strides = [40, 56], [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 2]]
    else:
        patch, kernels = [12, 40, 48], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
        strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]
    arch_kwargs = {
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 32],
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": kernels,
        "strides": strides,
        "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if network_class_name.endswith("ResidualEncoderUNet"):
        arch_kwargs["n_blocks_per_stage"] = arch_kwargs.pop("n_conv_per_stage")
    return ConfigurationManager({
        "data_identifier": f"nnUNetPlans_{dim}d" if dim == 2 else "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch,
        "median_image_size_in_voxels": [2 * p for p in patch],
        "spacing": [1.0] * dim if dim == 2 else [3.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": network_class_name, "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True,
    })


def perturb_zero_init(net: nn.Module) -> None:
    """Randomise the zero-initialised layers, otherwise the output is identically 0 and nothing can be observed."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)


def inputs(cm: ConfigurationManager, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(batch, 3, *cm.patch_size), torch.tensor([3, 917])[:batch]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("attention_stages", [0, 1, 2])
def test_output_shape_and_dtype(dim: int, attention_stages: int) -> None:
    cm = make_configuration(dim)
    net = build_denoiser(cm, num_image_channels=1, num_classes=2, attention_stages=attention_stages)
    x, t = inputs(cm)
    out = net(x, t)
    assert out.shape == (2, 2, *cm.patch_size) and out.dtype == torch.float32
    assert net(x, t.float() + 0.5).shape == out.shape  # float timesteps too
    # attention blocks: `attention_stages` encoder stages + the decoder stages of the same resolutions (not the
    # bottleneck, which the decoder does not have)
    n_attention = sum(isinstance(m, SelfAttentionBlock) for m in net.modules())
    assert n_attention == max(2 * attention_stages - 1, 0)


def test_bf16_autocast_returns_input_dtype() -> None:
    cm = make_configuration(3)
    net = build_denoiser(cm, 1, 2, attention_stages=2)
    perturb_zero_init(net)
    x, t = inputs(cm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t)
    assert out.dtype == x.dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_timestep_conditions_the_output(dim: int) -> None:
    cm = make_configuration(dim)
    net = build_denoiser(cm, 1, 2)
    x, _ = inputs(cm, batch=1)
    assert not net(x, torch.tensor([5])).any()  # zero-initialised output layer: the untrained net predicts 0
    perturb_zero_init(net)
    out_early, out_late = net(x, torch.tensor([5])), net(x, torch.tensor([900]))
    assert (out_early - out_late).abs().mean() > 1e-3 * out_early.abs().mean()
    # and each sample of a batch uses its own timestep
    batched = net(torch.cat([x, x]), torch.tensor([5, 900]))
    torch.testing.assert_close(batched[:1], out_early, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[1:], out_late, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention_stages", [0, 2])
def test_gradient_reaches_every_parameter(attention_stages: int) -> None:
    cm = make_configuration(2)
    net = build_denoiser(cm, 1, 2, attention_stages=attention_stages)
    x, t = inputs(cm)
    net(x, t).square().mean().backward()
    # DDP (find_unused_parameters=False) needs every parameter in the graph, also at the zero initialisation
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    net.zero_grad()
    perturb_zero_init(net)
    net(x, t).square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.ndim > 1 and not p.grad.any()] == []


def test_width_option_sets_features_and_parameter_count() -> None:
    cm = make_configuration(2)
    plan_width = build_denoiser(cm, 1, 2)
    assert [s.blocks[0].conv.out_channels for s in plan_width.encoder.stages] == [8, 16, 32, 32]
    kwargs = denoiser_kwargs_from_plans(cm, 1, 2, base_features=16)
    assert kwargs["features_per_stage"] == [16, 32, 32, 32]  # capped at the plan's maximum
    kwargs = denoiser_kwargs_from_plans(cm, 1, 2, base_features=16, max_features=64)
    assert kwargs["features_per_stage"] == [16, 32, 64, 64]
    wide = build_denoiser(cm, 1, 2, base_features=16, max_features=64)
    n_params = [sum(p.numel() for p in n.parameters()) for n in (plan_width, wide)]
    # conv weights dominate and scale with the square of the width: doubling it gives about 4x
    assert 3 * n_params[0] < n_params[1] < 5 * n_params[0]


def test_kwargs_roundtrip_through_weights_only_checkpoint(tmp_path) -> None:
    cm = make_configuration(3)
    kwargs = denoiser_kwargs_from_plans(cm, 1, 2, base_features=4, attention_stages=2)
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs["conv_op"] == "torch.nn.modules.conv.Conv3d"
    net = build_denoiser_from_kwargs(kwargs)
    perturb_zero_init(net)
    torch.save({"init_kwargs": kwargs, "network_weights": net.state_dict()}, tmp_path / "checkpoint.pth")
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    rebuilt = build_denoiser_from_kwargs(checkpoint["init_kwargs"])
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    rebuilt.load_state_dict(checkpoint["network_weights"])
    x, t = inputs(cm)
    torch.testing.assert_close(rebuilt(x, t), net(x, t))


def test_residual_encoder_plans_use_blocks_as_convs() -> None:
    cm = make_configuration(3, "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet")
    kwargs = denoiser_kwargs_from_plans(cm, 1, 2)
    assert kwargs["n_conv_per_stage"] == [2, 2, 2, 2]
    assert isinstance(build_denoiser(cm, 1, 2), TimeConditionedUNet)


def test_unsupported_architecture_is_a_user_error() -> None:
    cm = make_configuration(2, "dynamic_network_architectures.architectures.primus.Primus")
    with pytest.raises(PDDDPMUserError, match="not supported"):
        build_denoiser(cm, 1, 2)
    broken = copy.deepcopy(make_configuration(2).configuration)
    broken["architecture"]["arch_kwargs"]["nonlin"] = "torch.nn.NoSuchNonlin"
    with pytest.raises(PDDDPMUserError, match="NoSuchNonlin"):
        build_denoiser(ConfigurationManager(broken), 1, 2)


def test_attention_at_most_16_voxels_per_axis_sits_where_the_plans_put_that_resolution() -> None:
    """The paper's choice (one head at 16x16) as a resolution, not a stage count: the 2d plan's stages are 40x56,
    20x28, 10x14 and 5x7, so attention at <= 16 covers the two coarsest; the 3d plan's 12x40x48 -> ... -> 3x5x6
    stages have max sizes 48, 24, 12, 6."""
    from nnunet_pdddpm.networks.from_plans import attention_stages_at_most, stage_sizes

    cm2, cm3 = make_configuration(2), make_configuration(3)
    assert stage_sizes(cm2) == [[40, 56], [20, 28], [10, 14], [5, 7]]
    assert stage_sizes(cm3) == [[12, 40, 48], [12, 20, 24], [6, 10, 12], [6, 5, 6]]
    assert attention_stages_at_most(cm2, 16) == 2 and attention_stages_at_most(cm3, 16) == 2
    assert attention_stages_at_most(cm2, 4) == 1  # never less than the bottleneck
    assert attention_stages_at_most(cm2, 64) == 4
    kwargs = denoiser_kwargs_from_plans(cm2, 1, 2, attention_stages=1, attention_max_size=16)
    assert kwargs["attention_stages"] == 2  # stored as a count: checkpoints load as before
    net = build_denoiser(cm2, 1, 2, attention_max_size=16)
    channels = sorted(m.norm.num_channels for m in net.modules() if isinstance(m, SelfAttentionBlock))
    assert channels == [32, 32, 32]  # encoder stages 2 and 3, and the decoder stage at stage 2's resolution
