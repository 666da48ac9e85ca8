"""Measuring helpers shared by the benchmarks: device peaks, synchronised timing, peak memory, FLOPs, tables."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Callable, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

# dense bf16 tensor-core peaks (vendor datasheets, without sparsity); first match of the device name wins
BF16_PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def bf16_peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = device_name(device)
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """``(fn(), seconds)``, with the device synchronised before and after (GPU work is asynchronous)."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """Peak memory and what it is: CUDA allocator peak since the last reset, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (kib if sys.platform == "darwin" else kib * 1024), "process peak RSS"


def count_flops(fn: Callable[..., object], *shapes: Sequence[int], device: torch.device,
                dtypes: Sequence[torch.dtype] | None = None) -> int:
    """FLOPs of one call ``fn(*inputs)`` (FlopCounterMode: 2 per multiply-add; convolutions, matmuls, attention),
    on fake tensors of ``shapes``: nothing is computed and no memory is used."""
    dtypes = dtypes or [torch.float32] * len(shapes)
    with FakeTensorMode(allow_non_fake_inputs=True):
        inputs = [torch.zeros(s, dtype=d, device=device) for s, d in zip(shapes, dtypes)]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn(*inputs)
    return int(counter.get_total_flops())


def format_table(rows: list[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; ``columns`` are (key, header, format spec); None and NaN print as 'n/a'."""
    def cell(value, spec):
        if value is None or (isinstance(value, float) and value != value):
            return "n/a"
        return format(value, spec) if spec else str(value)

    cells = [[h for _, h, _ in columns]] + [[cell(r.get(k), s) for k, _, s in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)
