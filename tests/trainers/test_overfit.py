"""The denoiser learns: on one fixed batch the training loss falls clearly within seconds on a CPU."""
import torch
import torch.nn.functional as F
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_pdddpm.diffusion import DiffusionConfig, diffuse, encode_labels, make_ddpm_scheduler, training_target
from nnunet_pdddpm.networks.from_plans import build_denoiser

CONFIG_2D = {
    "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 4,
    "patch_size": [32, 32], "median_image_size_in_voxels": [32, 32], "spacing": [1.0, 1.0],
    "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
    "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
    "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]],
                        "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    "batch_dice": False,
}


def test_denoiser_overfits_a_fixed_batch():
    torch.manual_seed(0)
    net = build_denoiser(ConfigurationManager(CONFIG_2D), num_image_channels=1, num_classes=2)
    scheduler = make_ddpm_scheduler(DiffusionConfig())
    seg = (torch.rand(4, 1, 32, 32) > 0.7).long()
    image = seg.float() + 0.1 * torch.randn(4, 1, 32, 32)
    x0 = encode_labels(seg, [0, 1])
    noise = torch.randn_like(x0)
    t = torch.tensor([50, 200, 400, 700])
    x_t = diffuse(scheduler, x0, noise, t)
    target = training_target(scheduler, x0, noise, t)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(net(torch.cat((image, x_t), 1), t), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]
