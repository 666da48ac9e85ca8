"""Build the denoiser and the attention U-Net from an nnU-Net configuration (``nnUNetPlans.json``).

Plans describe a ``PlainConvUNet`` or ``ResidualEncoderUNet``; we take their topology (stages, kernel sizes, strides,
convs per stage, norm, nonlinearity) and build our networks with it, as nnU-Net's ``get_network_from_plans`` does for
its own. The denoiser's constructor arguments are kept as plain data (op classes as import strings) so a checkpoint
can store them and be loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import pydoc
from typing import Any

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.networks.attention_unet import AttentionGateUNet
from nnunet_pdddpm.networks.denoiser import TimeConditionedUNet

SUPPORTED_ARCHITECTURES = ("PlainConvUNet", "ResidualEncoderUNet")
# keys of the plans' arch_kwargs that we use; "n_conv_per_stage" is "n_blocks_per_stage" in residual plans
_TOPOLOGY_KEYS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
                  "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
                  "dropout_op_kwargs", "nonlin", "nonlin_kwargs")
# located by name rather than via the plans' "_kw_requires_import": denoiser kwargs in a checkpoint have no plans,
# and _to_plain turns any class into its import string
_CLASS_KEYS = ("conv_op", "norm_op", "dropout_op", "nonlin")


def _to_plain(value: Any) -> Any:
    """Tuples → lists, numpy scalars → Python numbers, classes → import strings (JSON / weights_only safe)."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalars
        return value.item()
    return value


def _locate(import_string: str | None) -> type | None:
    if import_string is None:
        return None
    located = pydoc.locate(import_string)
    if located is None:
        raise PDDDPMUserError(f"Cannot import '{import_string}' named in the network arguments; check the plans file.")
    return located


def plans_topology(configuration_manager: ConfigurationManager) -> dict:
    """The plain U-Net topology of a configuration as plain data (op classes as import strings).

    Returns the keys of ``_TOPOLOGY_KEYS``; a residual-encoder plan's ``n_blocks_per_stage`` becomes
    ``n_conv_per_stage`` (one conv block per residual block) and its residual-only keys are dropped.
    """
    class_name = configuration_manager.network_arch_class_name
    if not (class_name.startswith("dynamic_network_architectures.")
            and class_name.rsplit(".", 1)[-1] in SUPPORTED_ARCHITECTURES):
        raise PDDDPMUserError(f"The plans' architecture {class_name} is not supported; PD-DDPM needs plans for "
                              f"{' or '.join(SUPPORTED_ARCHITECTURES)} (nnU-Net's default or ResEnc planners).")
    arch = dict(configuration_manager.network_arch_init_kwargs)
    if "n_conv_per_stage" not in arch and "n_blocks_per_stage" in arch:
        arch["n_conv_per_stage"] = arch["n_blocks_per_stage"]
    missing = [k for k in _TOPOLOGY_KEYS if k not in arch and not k.startswith("dropout")]
    if missing:
        raise PDDDPMUserError(f"The plans' architecture arguments lack {', '.join(missing)}; rerun nnU-Net planning.")
    return {k: _to_plain(arch.get(k)) for k in _TOPOLOGY_KEYS}


def stage_sizes(configuration_manager: ConfigurationManager) -> list[list[int]]:
    """Feature-map size per axis at each stage of the plans' U-Net: the patch divided by the cumulative strides."""
    topology = plans_topology(configuration_manager)
    size = [int(v) for v in configuration_manager.patch_size]
    sizes = []
    for stride in topology["strides"]:
        stride = stride if isinstance(stride, (list, tuple)) else [stride] * len(size)
        size = [v // int(s) for v, s in zip(size, stride)]
        sizes.append(size)
    return sizes


def attention_stages_at_most(configuration_manager: ConfigurationManager, max_size: int) -> int:
    """How many of the coarsest stages have a feature map of at most ``max_size`` voxels along every axis (the paper:
    attention at 16x16). Sizes shrink with depth, so these are always the coarsest stages; at least the bottleneck."""
    sizes = stage_sizes(configuration_manager)
    return max(1, sum(max(size) <= max_size for size in sizes))


def with_features(configuration_manager: ConfigurationManager, base: int,
                  cap: int | None = None) -> ConfigurationManager:
    """A copy of ``configuration_manager`` whose stage ``i`` has ``min(base * 2**i, cap)`` features.

    ``cap`` defaults to the plan's largest feature count. The copy is a whole configuration, so whatever builds a
    network from it (ours, or nnU-Net's ``build_network_architecture``, at training and at inference) builds the
    same width; the plans themselves are not changed.
    """
    configuration = copy.deepcopy(configuration_manager.configuration)
    arch = configuration["architecture"]["arch_kwargs"]
    cap = cap if cap is not None else max(arch["features_per_stage"])
    arch["features_per_stage"] = [min(base * 2 ** i, cap) for i in range(arch["n_stages"])]
    return ConfigurationManager(configuration)


def denoiser_kwargs_from_plans(configuration_manager: ConfigurationManager, num_image_channels: int,
                               num_classes: int, base_features: int | None = None, max_features: int | None = None,
                               attention_stages: int = 1, num_heads: int = 1,
                               attention_max_size: int | None = None) -> dict:
    """Constructor arguments of :class:`TimeConditionedUNet` for a configuration, as plain data.

    Args:
        num_image_channels: image modalities; the denoiser's input is ``num_image_channels + num_classes`` channels.
        num_classes: channels of the mask encoding (one per class, as the trainer encodes ``x_0``).
        base_features: None keeps the plan's ``features_per_stage``; an int sets stage ``i`` to
            ``min(base_features * 2**i, max_features)`` (:func:`with_features`; the paper uses 128).
        max_features: cap for ``base_features``; default the plan's largest feature count.
        attention_stages: self-attention at this many coarsest stages (1: the bottleneck only).
        attention_max_size: when given, replaces ``attention_stages``: attention at every stage whose feature map
            is at most this many voxels along each axis (:func:`attention_stages_at_most`; the paper: 16).

    Returns:
        dict of str/int/float/bool/list/dict/None with op classes as import strings, for checkpoints and
        :func:`build_denoiser_from_kwargs`.
    """
    topology = plans_topology(configuration_manager)
    if base_features is not None:
        # narrowed after the check above: unsupported plans are refused in one sentence, not with a KeyError
        topology = plans_topology(with_features(configuration_manager, base_features, max_features))
    if attention_max_size is not None:
        attention_stages = attention_stages_at_most(configuration_manager, attention_max_size)
    return {
        "input_channels": int(num_image_channels) + int(num_classes),
        "num_classes": int(num_classes),
        "n_stages": topology["n_stages"],
        "features_per_stage": topology["features_per_stage"],
        "conv_op": topology["conv_op"],
        "kernel_sizes": topology["kernel_sizes"],
        "strides": topology["strides"],
        "n_conv_per_stage": topology["n_conv_per_stage"],
        "n_conv_per_stage_decoder": topology["n_conv_per_stage_decoder"],
        "norm_op": topology["norm_op"],
        "norm_op_kwargs": topology["norm_op_kwargs"],
        "nonlin": topology["nonlin"],
        "nonlin_kwargs": topology["nonlin_kwargs"],
        "conv_bias": bool(topology["conv_bias"]),
        "attention_stages": int(attention_stages),
        "num_heads": int(num_heads),
        "time_embed_dim": None,
    }


def build_denoiser_from_kwargs(kwargs: dict) -> TimeConditionedUNet:
    """Instantiate the denoiser from :func:`denoiser_kwargs_from_plans` output (e.g. read back from a checkpoint)."""
    located = {k: _locate(v) if k in _CLASS_KEYS else v for k, v in kwargs.items()}
    return TimeConditionedUNet(**located)


def build_denoiser(configuration_manager: ConfigurationManager, num_image_channels: int, num_classes: int,
                   base_features: int | None = None, max_features: int | None = None, attention_stages: int = 1,
                   num_heads: int = 1, attention_max_size: int | None = None) -> TimeConditionedUNet:
    """:func:`denoiser_kwargs_from_plans` then :func:`build_denoiser_from_kwargs`."""
    return build_denoiser_from_kwargs(denoiser_kwargs_from_plans(
        configuration_manager, num_image_channels, num_classes, base_features, max_features, attention_stages,
        num_heads, attention_max_size))


def build_attention_unet(configuration_manager: ConfigurationManager, num_input_channels: int,
                         num_output_channels: int, enable_deep_supervision: bool = True) -> AttentionGateUNet:
    """The pre-segmentation attention U-Net with the configuration's topology, He-initialised like nnU-Net's nets.

    Signature as nnU-Net's ``build_network_architecture`` (after the plans manager), so a trainer can return it.
    """
    topology = plans_topology(configuration_manager)
    arch = {k: _locate(v) if k in _CLASS_KEYS else v for k, v in topology.items()}
    return AttentionGateUNet(input_channels=num_input_channels, num_classes=num_output_channels,
                             deep_supervision=enable_deep_supervision, **arch)
