"""The denoiser as the sampling loop calls it: eager, channels-last, or compiled into a fixed-shape graph.

``SamplingDenoiser(image, x_t, t)`` concatenates image and noisy mask, runs the network under the
caller's autocast (bf16 on CUDA in ``PDDDPMPredictor``) and returns float32. Two options, both off by
default in :class:`SamplingSettings`:

- ``channels_last``: network weights and input in channels-last layout (cuDNN's native NHWC/NDHWC
  convolutions on tensor cores; a no-op for the maths, not for the bits).
- ``compile``: ``torch.compile`` of this call with ``dynamic=False``; on CUDA with
  ``mode="reduce-overhead"`` (CUDA graphs: the whole U-Net replays as one graph, no per-kernel launch
  cost). Every call must then have the same shape, which is why ``ensemble_sampling`` pads the last
  batch (``batching.plan_windows(fixed_shape=True)``). Compiling costs tens of seconds once per fold
  network; :class:`DenoiserCache` keeps the compiled callables across cases.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn

Autocast = Callable[[], ContextManager]


def _channels_last_format(network: nn.Module) -> torch.memory_format:
    conv = next(m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    return torch.channels_last if isinstance(conv, nn.Conv2d) else torch.channels_last_3d


class SamplingDenoiser:
    """``(image (B, C, *patch), x_t (B, K, *patch), t (B,)) -> model output (B, K, *patch)`` float32.

    ``network`` is converted in place to channels-last, or back to the default layout (weights' layout
    only). ``compile`` wraps the call in ``torch.compile`` (``reduce-overhead`` on CUDA, inductor's default
    elsewhere).
    """

    def __init__(self, network: nn.Module, autocast: Autocast | None = None, channels_last: bool = False,
                 compile: bool = False) -> None:
        self.network = network
        self.num_classes: int = network.num_classes
        self.autocast = autocast or nullcontext
        self.memory_format = _channels_last_format(network) if channels_last else None
        network.to(memory_format=self.memory_format or torch.contiguous_format)
        device = next(network.parameters()).device
        self.compiled = compile  # callers must then keep the input shape fixed
        self.cuda_graphs = compile and device.type == "cuda"
        self._call = self._forward
        if compile:
            mode = "reduce-overhead" if self.cuda_graphs else None
            self._call = torch.compile(self._forward, mode=mode, dynamic=False)

    def _forward(self, image: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.cat((image, x_t), 1)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        with self.autocast():
            return self.network(x, t).float()

    def __call__(self, image: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return self._call(image, x_t, t)
        t = t.contiguous()  # the samplers pass an expanded view; give the graph a plain (B,) input
        if not self.cuda_graphs:
            return self._call(image, x_t, t)
        # a new replay may overwrite the previous output buffer: mark the step, keep a private copy
        torch.compiler.cudagraph_mark_step_begin()
        return self._call(image, x_t, t).clone()


class DenoiserCache:
    """Builds the :class:`SamplingDenoiser` s of a list of fold networks once per (networks, options), so that
    a compiled graph is reused by every case a predictor samples."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._denoisers: list[SamplingDenoiser] = []

    def get(self, networks: Sequence[nn.Module], autocast: Autocast, channels_last: bool,
            compile: bool) -> list[SamplingDenoiser]:
        key = (tuple(id(n) for n in networks), channels_last, compile)
        if key != self._key:
            self._denoisers = [SamplingDenoiser(n, autocast, channels_last, compile) for n in networks]
            self._key = key
        return self._denoisers
