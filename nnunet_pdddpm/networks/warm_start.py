"""Start the denoiser as the user's nnU-Net: the refiner's initialisation.

The denoiser (:class:`.denoiser.TimeConditionedUNet`) has ``PlainConvUNet``'s topology, and everything it adds
for diffusion starts as the identity (zero-initialised timestep scale/shift and attention output). So the
weights of a trained ``PlainConvUNet`` of the same plans map one to one: encoder and decoder convs and norms,
transposed convs, the full-resolution segmentation layer as the output conv, and the image part of the first
conv, with the noisy-mask channels of that conv set to zero. A denoiser that reads its output as class logits
(``output_activation="softmax"``) then predicts exactly nnU-Net's softmax for any timestep and any noisy
mask; training only has to teach it to use the mask. Deep-supervision heads have no counterpart and are
dropped, as nnU-Net's own ``load_pretrained_weights`` drops them.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from nnunet_pdddpm.errors import PDDDPMUserError

_ENCODER = re.compile(r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(.+)$")
_DECODER = re.compile(r"^decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(.+)$")
_TRANSPOSED = re.compile(r"^decoder\.transpconvs\.(\d+)\.(.+)$")
_SEGMENTATION = re.compile(r"^decoder\.seg_layers\.(\d+)\.(.+)$")
# PlainConvUNet's state dict lists each conv block twice (``all_modules``) and the encoder again under the decoder
_ALIASES = (".all_modules.", "decoder.encoder.")
# what the denoiser adds for diffusion: kept at its (identity) initialisation
_DIFFUSION_ONLY = ("time_embedding.", ".scale_shift.", ".attentions.")
FIRST_CONV = "encoder.stages.0.blocks.0.conv.weight"


def denoiser_state_from_segmenter(segmenter_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``PlainConvUNet`` state dict renamed to the denoiser's keys (first conv still image-only).

    Raises :class:`PDDDPMUserError` for a state dict of another architecture (attention gates, residual encoder).
    """
    segmentation = [int(m.group(1)) for k in segmenter_state if (m := _SEGMENTATION.match(k))]
    mapped, foreign = {}, []
    for key, value in segmenter_state.items():
        if any(alias in key for alias in _ALIASES):
            continue
        if m := _ENCODER.match(key):
            mapped[f"encoder.stages.{m[1]}.blocks.{m[2]}.{m[3]}.{m[4]}"] = value
        elif m := _DECODER.match(key):
            mapped[f"decoder.stages.{m[1]}.blocks.{m[2]}.{m[3]}.{m[4]}"] = value
        elif m := _TRANSPOSED.match(key):
            mapped[f"decoder.transpconvs.{m[1]}.{m[2]}"] = value
        elif m := _SEGMENTATION.match(key):
            if int(m[1]) == max(segmentation):  # the full-resolution head; the others are deep supervision
                mapped[f"output_conv.{m[2]}"] = value
        else:
            foreign.append(key)
    if foreign or not mapped:
        example = foreign[0] if foreign else "no encoder weights"
        raise PDDDPMUserError(f"The pre-segmenter is not nnU-Net's PlainConvUNet ({example}), so the denoiser cannot "
                              f"start from it; warm-start from a model trained with nnUNetTrainer on the default "
                              f"plans, or set warm_start = None.")
    return mapped


def warm_start_denoiser(denoiser: nn.Module, segmenter_state: dict[str, torch.Tensor], source: str) -> None:
    """Load a trained ``PlainConvUNet`` (its ``network_weights``) into ``denoiser`` in place.

    ``source`` names the checkpoint in error messages. Every weight the segmenter and the denoiser share must have
    the same shape; a width or topology mismatch is one sentence, never a silent partial initialisation.
    """
    mapped = denoiser_state_from_segmenter(segmenter_state)
    target = denoiser.state_dict()
    shared = [k for k in target if not any(part in k for part in _DIFFUSION_ONLY)]
    missing = [k for k in shared if k not in mapped]
    extra = [k for k in mapped if k not in target]
    if missing or extra:
        raise PDDDPMUserError(
            f"The pre-segmenter in {source} has another topology than the denoiser ({(missing or extra)[0]} "
            f"{'missing' if missing else 'has no counterpart'}); train both on the same plans and configuration.")
    for key in shared:
        want, have = tuple(target[key].shape), tuple(mapped[key].shape)
        if key == FIRST_CONV and want[0] == have[0] and want[1] > have[1] and want[2:] == have[2:]:
            continue
        if want != have:
            raise PDDDPMUserError(
                f"The pre-segmenter in {source} does not fit the denoiser: {key} has shape {list(have)}, the denoiser "
                f"{list(want)}; give the denoiser the pre-segmenter's width (base_features / max_features) and "
                f"classes.")
    first = mapped[FIRST_CONV]
    image_channels = first.shape[1]
    with torch.no_grad():
        for key in shared:
            if key == FIRST_CONV:
                target[key].zero_()
                target[key][:, :image_channels] = first.to(target[key])  # image channels; noisy-mask channels 0
            else:
                target[key].copy_(mapped[key].to(target[key]))
    denoiser.load_state_dict(target)
