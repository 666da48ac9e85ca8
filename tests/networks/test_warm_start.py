"""The refiner's initialisation: a denoiser warm-started from nnU-Net's PlainConvUNet predicts exactly its softmax.

nnU-Net's own network builder (``get_network_from_plans``) makes the segmenter from the configuration, our trainer's
builder makes the denoiser from the same configuration; after the warm start the denoiser's x0 estimate must be
nnU-Net's softmax of the image, whatever the timestep and the noisy mask.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_pdddpm.diffusion import DiffusionConfig, model_output
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.networks.from_plans import build_attention_unet, build_denoiser, with_features
from nnunet_pdddpm.networks.warm_start import FIRST_CONV, warm_start_denoiser

sys.path.insert(0, str(Path(__file__).parent))
from test_denoiser import make_configuration  # noqa: E402

SOFTMAX_X0 = DiffusionConfig(prediction_type="sample", output_activation="softmax")


def nnunet_network(cm, image_channels: int, classes: int) -> torch.nn.Module:
    """nnU-Net's network for the configuration (deep supervision on, as nnU-Net trains it), with random weights
    everywhere (norm affine parameters included, so that a missed layer shows)."""
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, image_channels, classes,
                                 deep_supervision=True)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("classes", [2, 3])
def test_warm_started_denoiser_predicts_nnunets_softmax_at_any_t_and_mask(dim: int, classes: int) -> None:
    cm = make_configuration(dim)
    image_channels = 2
    segmenter = nnunet_network(cm, image_channels, classes)
    denoiser = build_denoiser(cm, image_channels, classes, attention_stages=2)
    warm_start_denoiser(denoiser, segmenter.state_dict(), "the test segmenter")
    segmenter, denoiser = segmenter.double().eval(), denoiser.double().eval()

    torch.manual_seed(4)
    image = torch.randn(3, image_channels, *cm.patch_size, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.softmax(segmenter(image)[0], 1)
        for t in (0, 137, 999):
            x_t = torch.randn(3, classes, *cm.patch_size, dtype=torch.float64) * 2
            out = denoiser(torch.cat((image, x_t), 1), torch.full((3,), t))
            x0 = model_output(SOFTMAX_X0, out)
            assert torch.allclose((x0 + 1) / 2, expected, atol=1e-5, rtol=0)
    # the noisy-mask channels of the first conv start at zero, the image channels are nnU-Net's
    first = denoiser.state_dict()[FIRST_CONV]
    assert not first[:, image_channels:].any()
    assert torch.equal(first[:, :image_channels], segmenter.state_dict()["encoder.stages.0.0.convs.0.conv.weight"])


def test_other_width_is_one_sentence() -> None:
    cm = make_configuration(2)
    segmenter = nnunet_network(with_features(cm, 4), 1, 2)
    denoiser = build_denoiser(cm, 1, 2)
    before = {k: v.clone() for k, v in denoiser.state_dict().items()}
    with pytest.raises(PDDDPMUserError, match=r"does not fit the denoiser: .* has shape \[4, 1, 3, 3\], the denoiser "
                                              r"\[8, 3, 3, 3\]; give the denoiser the pre-segmenter's width"):
        warm_start_denoiser(denoiser, segmenter.state_dict(), "seg.pth")
    assert all(torch.equal(before[k], v) for k, v in denoiser.state_dict().items())  # nothing partly loaded


def test_other_class_count_is_one_sentence() -> None:
    cm = make_configuration(2)
    with pytest.raises(PDDDPMUserError, match=r"output_conv.weight has shape \[3, 8, 1, 1\], the denoiser "
                                              r"\[2, 8, 1, 1\]"):
        warm_start_denoiser(build_denoiser(cm, 1, 2), nnunet_network(cm, 1, 3).state_dict(), "seg.pth")


def test_attention_unet_is_refused_in_one_sentence() -> None:
    cm = make_configuration(2)
    attention_unet = build_attention_unet(cm, 1, 2)
    with pytest.raises(PDDDPMUserError, match=r"is not nnU-Net's PlainConvUNet \(.*\), so the denoiser cannot start "
                                              r"from it"):
        warm_start_denoiser(build_denoiser(cm, 1, 2), attention_unet.state_dict(), "att.pth")
