"""Which (patch, member) samples share a denoiser call, and how many fit in memory.

A case has ``P`` patches, ``F`` folds (one network each) and ``M_f`` members of fold ``f`` per patch
(``ensemble_sampling.members_per_fold``). Every sample is one job ``(patch, member)`` of one fold. Jobs are
processed in windows of consecutive patches: inside a window each fold's jobs (patch-major, members
consecutive) are cut into batches of at most ``batch_size``, so a patch's members may span two batches; the
window's patches are finished (mean, variance, Gaussian aggregation) once all their folds are done. The window
length is chosen so that ``patches * M`` fills whole batches where that costs little accumulator memory, so
the denoiser runs full batches instead of ``floor(batch_size / M) * M`` samples.

With ``fixed_shape`` the last batch of a fold is padded to ``batch_size`` with dummy samples, so a
compiled (CUDA-graph) denoiser sees one shape for every call of every case.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

# a window holds the members' running sums for its patches; beyond this many batches' worth of
# patches the memory is not worth the last partial batch
MAX_WINDOW_BATCHES = 8


@dataclass(frozen=True)
class Job:
    patch: int
    member: int


@dataclass(frozen=True)
class Batch:
    """One denoiser call: ``jobs`` of one ``fold`` followed by ``padding`` dummy samples."""

    fold: int
    jobs: tuple[Job, ...]
    padding: int = 0

    @property
    def size(self) -> int:
        return len(self.jobs) + self.padding


@dataclass(frozen=True)
class Window:
    """Patches ``patches`` (a range) and the batches that sample all their jobs, fold by fold."""

    patches: range
    batches: tuple[Batch, ...]


def window_length(num_patches: int, ensemble_size: int, batch_size: int) -> int:
    """Patches per window: the length in ``[ceil(B / M), MAX_WINDOW_BATCHES * B / M]`` that needs the fewest
    denoiser calls for the whole case (ties: the shortest, which holds the fewest running sums)."""
    lo = max(1, math.ceil(batch_size / ensemble_size))
    hi = max(lo, MAX_WINDOW_BATCHES * batch_size // ensemble_size)
    if num_patches <= lo:
        return max(1, num_patches)

    def calls(g: int) -> int:
        full, rest = divmod(num_patches, g)
        return full * math.ceil(g * ensemble_size / batch_size) + math.ceil(rest * ensemble_size / batch_size)

    return min(range(lo, min(hi, num_patches) + 1), key=lambda g: (calls(g), g))


def plan_windows(num_patches: int, members: Sequence[int], batch_size: int,
                 fixed_shape: bool = False) -> list[Window]:
    """Every (fold, patch, member) exactly once, in batches of at most ``batch_size`` samples.

    members: samples of each fold per patch (a fold with 0 is not called). Within a window, the jobs of a
    patch come in fold order and, per fold, in member order (the order in which their probabilities are
    summed, so results do not depend on ``batch_size``).
    """
    if not members or min(members) < 0 or max(members) < 1 or batch_size < 1 or num_patches < 0:
        raise ValueError("members (per fold) and batch_size must be positive")
    length = window_length(num_patches, max(members), batch_size)
    windows = []
    for w0 in range(0, num_patches, length):
        patches = range(w0, min(w0 + length, num_patches))
        batches = []
        for fold, fold_members in enumerate(members):
            jobs = [Job(p, m) for p in patches for m in range(fold_members)]
            for c0 in range(0, len(jobs), batch_size):
                chunk = tuple(jobs[c0:c0 + batch_size])
                batches.append(Batch(fold, chunk, batch_size - len(chunk) if fixed_shape else 0))
        windows.append(Window(patches, tuple(batches)))
    return windows


def estimate_sample_bytes(network: nn.Module, input_shape: Sequence[int], bytes_per_element: int = 4) -> int:
    """Rough activation memory of one sample in one inference call of ``network`` (no gradients).

    ``input_shape`` is (C, *patch); the network is called as ``network(x, t)``. Runs once on fake
    tensors (no memory, no compute) and counts what a U-Net keeps alive at its widest layer: every
    encoder stage's output (the skips, held until the decoder uses them), plus the largest layer input
    (e.g. the decoder's concatenation) and twice the largest layer output (the output and one temporary,
    e.g. a norm's). ``bytes_per_element`` 4 is conservative under bf16 autocast. Compared with the
    measured peak by ``benchmarks/benchmark_sampling.py``.
    """
    inputs: list[int] = [math.prod(input_shape)]
    outputs: list[int] = []
    skips: list[int] = []
    encoder = getattr(network, "encoder", None)
    encoder_stages = {id(m) for m in getattr(encoder, "stages", [])}

    def hook(module, args, output):
        if not isinstance(output, torch.Tensor):
            return
        if id(module) in encoder_stages:
            skips.append(output[0].numel())
            return
        outputs.append(output[0].numel())
        inputs.extend(a[0].numel() for a in args if isinstance(a, torch.Tensor) and a.ndim == len(input_shape) + 1)

    handles = [m.register_forward_hook(hook) for m in network.modules()
               if not list(m.children()) or id(m) in encoder_stages]
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            x = torch.empty((1, *input_shape), device=next(network.parameters()).device)
            network(x, torch.zeros(1, dtype=torch.long, device=x.device))
    finally:
        for h in handles:
            h.remove()
    return int(bytes_per_element * (sum(skips) + max(inputs) + 2 * max(outputs + [0])))


def batch_size_for_budget(max_batch_size: int, budget_bytes: float | None, sample_bytes: int) -> int:
    """The largest batch (at least 1, at most ``max_batch_size``) whose activations fit ``budget_bytes``."""
    if budget_bytes is None:
        return max_batch_size
    return max(1, min(max_batch_size, int(budget_bytes // max(sample_bytes, 1))))
