"""The one autocast rule of training and sampling: bf16 on CUDA, full float32 elsewhere.

bf16 needs no loss scaling (unlike fp16) and its rounding is what the sampler tests model; CPU autocast
would make CPU runs differ from the float32 reference for no speed gain on the CI machines.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import torch


def autocast(device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` in bf16 on CUDA; a disabled autocast (plain float32) on any other device."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type if device.type in ("cpu", "mps") else "cpu", enabled=False)
