"""The attention U-Net pre-segmenter, built from nnU-Net-style configurations (2D and anisotropic 3D)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_pdddpm.networks import AttentionGate, AttentionGateUNet, build_attention_unet


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)  # the He initialisation draws from the global generator: make every test deterministic


def make_configuration(dim: int) -> ConfigurationManager:
    """A small PlainConvUNet configuration as nnU-Net's ExperimentPlanner writes it (only the keys used here)."""
    if dim == 2:
        patch, kernels, strides = [40, 56], [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 2]]
    else:
        patch, kernels = [12, 40, 48], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
        strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]
    return ConfigurationManager({
        "data_identifier": "nnUNetPlans_2d" if dim == 2 else "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch,
        "spacing": [1.0] * dim,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 4, "features_per_stage": [8, 16, 32, 32], "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
                "kernel_sizes": kernels, "strides": strides, "n_conv_per_stage": [2, 2, 2, 2],
                "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
    })


def expected_shapes(cm: ConfigurationManager, num_classes: int) -> list[tuple[int, ...]]:
    """Deep-supervision output shapes, highest resolution first (one per decoder stage)."""
    strides = np.cumprod(cm.network_arch_init_kwargs["strides"], axis=0)[:-1]
    return [(2, num_classes, *(np.array(cm.patch_size) // s)) for s in strides]


@pytest.mark.parametrize("dim", [2, 3])
def test_deep_supervision_outputs_and_toggle(dim: int) -> None:
    cm = make_configuration(dim)
    net = build_attention_unet(cm, num_input_channels=1, num_output_channels=3, enable_deep_supervision=True)
    x = torch.randn(2, 1, *cm.patch_size)
    outputs = net(x)
    assert isinstance(outputs, list) and [tuple(o.shape) for o in outputs] == expected_shapes(cm, 3)
    net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
    single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, *cm.patch_size)
    torch.testing.assert_close(single, outputs[0])
    no_ds = build_attention_unet(cm, 1, 3, enable_deep_supervision=False)
    assert no_ds.decoder.deep_supervision is False
    no_ds.load_state_dict(net.state_dict())  # segmentation heads exist either way, so weights load across modes


def test_attention_gates_change_the_skips() -> None:
    cm = make_configuration(3)
    net = build_attention_unet(cm, 1, 2)
    seen = []
    hooks = [g.register_forward_hook(lambda mod, args, out: seen.append((mod, args, out)))
             for g in net.modules() if isinstance(g, AttentionGate)]
    net(torch.randn(2, 1, *cm.patch_size))
    for h in hooks:
        h.remove()
    assert len(seen) == 3  # one gate per skip
    for gate, (skip, gating), gated in seen:
        psi = gate.coefficients(skip, gating)
        assert psi.shape == (skip.shape[0], 1, *skip.shape[2:])
        assert ((psi >= 0) & (psi <= 1)).all()
        assert psi.min() < 0.99 and psi.std() > 1e-3  # spatially varying, not a no-op
        torch.testing.assert_close(gated, skip * psi)
        assert not torch.allclose(gated, skip)


def test_gradient_reaches_every_parameter() -> None:
    cm = make_configuration(2)
    net = build_attention_unet(cm, 1, 2, enable_deep_supervision=True)
    sum(o.square().mean() for o in net(torch.randn(2, 1, *cm.patch_size))).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or (p.ndim > 1 and not p.grad.any())] == []


def test_same_encoder_as_nnunet_and_feature_map_size() -> None:
    cm = make_configuration(3)
    net = build_attention_unet(cm, 1, 2)
    assert isinstance(net, AttentionGateUNet)
    plain = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                   cm.network_arch_init_kwargs_req_import, 1, 2, deep_supervision=True)
    # same encoder parameter names and shapes as nnU-Net's PlainConvUNet (its encoder weights load into ours)
    encoder_keys = {k: v.shape for k, v in plain.state_dict().items() if k.startswith("encoder.")}
    assert encoder_keys == {k: v.shape for k, v in net.state_dict().items() if k.startswith("encoder.")}
    # nnU-Net's planner uses this for its VRAM estimate: the gates add feature maps on top of the plain U-Net
    assert net.compute_conv_feature_map_size(cm.patch_size) > plain.compute_conv_feature_map_size(cm.patch_size)
