"""Training throughput of an nnU-Net trainer: data loading against the training step.

Four phases of ``--iterations`` each, after ``--warmup`` untimed iterations:

- ``step only``: ``train_step`` on one cached batch, the rate of the device with free data;
- ``loop (synced)``: both, with a device synchronisation after each part; ``wait %`` is the share of
  wall time spent waiting for data;
- ``loop (as run_training)``: both, exactly as ``nnUNetTrainer.run_training`` queues them (no sync
  but the trainer's own), so the host prepares step k+1 while the device runs step k; ``busy %`` =
  iterations x (step-only seconds per iteration) / wall time, the device's busy share, estimated;
- ``data only``: ``next(dataloader_train)`` alone after ``--drain`` untimed batches (the prefetch
  queue), the rate of nnU-Net's augmentation pipeline (``nnUNet_n_proc_DA`` worker processes).

FLOPs per step are counted on one forward call at the network's batch (images x noise draws,
``FlopCounterMode``) and taken three times (forward, backward for inputs and weights). ``--draws`` sets
``noise_draws_per_image``; ``--compile`` nnU-Net's ``torch.compile`` of the network (``auto``: nnU-Net's
rule, on for CUDA unless ``nnUNet_compile`` says otherwise). The trainer writes into a temporary
``nnUNet_results`` (no checkpoint).

    python -m benchmarks.benchmark_training -d 991 -c 2d -tr PDDDPMTrainer_tiny -device cpu --iterations 20
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from benchmarks.common import (
    bf16_peak_flops,
    count_flops,
    device_name,
    format_table,
    peak_memory_bytes,
    reset_peak_memory,
    synchronize,
    write_json,
)

COLUMNS = (("phase", "phase", ""), ("iterations_per_s", "it/s", ".2f"), ("images_per_s", "images/s", ".1f"),
           ("samples_per_s", "samples/s", ".1f"), ("data_s_per_it", "data s/it", ".4f"),
           ("step_s_per_it", "step s/it", ".4f"), ("wait_pct", "wait %", ".1f"), ("busy_pct", "busy %", ".1f"),
           ("tflop_per_s", "TFLOP/s", ".3f"), ("peak_fraction_pct", "% bf16 peak", ".1f"),
           ("peak_memory_gib", "peak mem GiB", ".2f"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_training", description=__doc__.split("\n")[0])
    p.add_argument("-d", required=True, help="Dataset name or ID (preprocessed in nnUNet_preprocessed).")
    p.add_argument("-c", required=True, help="Configuration.")
    p.add_argument("-tr", default="PDDDPMTrainer_tiny", help="Trainer class.")
    p.add_argument("-p", default="nnUNetPlans", help="Plans identifier.")
    p.add_argument("-f", default="0", help="Fold.")
    p.add_argument("-device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--drain", type=int, default=None,
                   help="Batches popped untimed before 'data only' (default: 2 x nnUNet_n_proc_DA + 10, more than "
                        "the workers and nnU-Net's queue hold).")
    p.add_argument("--draws", type=int, default=None,
                   help="noise_draws_per_image (default: the trainer's); the loader's batch shrinks by it.")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile of the network (auto: nnU-Net's default, on for CUDA).")
    p.add_argument("--json", default=None)
    return p


def _phase(name: str, data_s: list[float], step_s: list[float], batch: int, flops_per_step: float,
           device: torch.device, wall: float | None = None, steps: int | None = None,
           busy_s: float | None = None, images: int | None = None) -> dict:
    """One table row; ``wall``/``steps``/``busy_s`` for a loop timed as a whole (no per-part times)."""
    wall = sum(data_s) + sum(step_s) if wall is None else wall
    n = max(len(data_s), len(step_s)) if steps is None else steps
    peak = bf16_peak_flops(device)
    flop_per_s = flops_per_step * n / wall if (step_s or steps) else None
    if busy_s is None and data_s and step_s:
        busy_s = sum(step_s)
    return {"phase": name, "iterations": n, "iterations_per_s": n / wall, "samples_per_s": n * batch / wall,
            "images_per_s": n * (batch if images is None else images) / wall,
            "data_s_per_it": float(np.mean(data_s)) if data_s else None,
            "step_s_per_it": float(np.mean(step_s)) if step_s else None,
            "wait_pct": 100 * sum(data_s) / wall if data_s and step_s else None,
            "busy_pct": None if busy_s is None else min(100.0, 100 * busy_s / wall),
            "tflop_per_s": None if flop_per_s is None else flop_per_s / 1e12,
            "peak_fraction_pct": None if (peak is None or flop_per_s is None) else 100 * flop_per_s / peak,
            "peak_memory_gib": peak_memory_bytes(device)[0] / 2 ** 30}


def _timed(fn, device: torch.device) -> tuple[object, float]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    results = tempfile.mkdtemp(prefix="pdddpm_bench_results_")
    os.environ["nnUNet_results"] = results  # read when nnunetv2.paths is imported, below
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    from nnunet_pdddpm.discovery import ensure_trainer_discovery

    ensure_trainer_discovery()
    trainer = get_trainer_from_args(args.d, args.c, int(args.f) if args.f != "all" else "all", args.tr, args.p,
                                    device=device)
    trainer.disable_checkpointing = True
    if args.draws is not None:
        trainer.noise_draws_per_image = args.draws  # read by initialize(), in on_train_start()
    if args.compile != "auto":
        trainer._do_i_compile = (lambda: True) if args.compile == "on" else (lambda: False)
    try:
        trainer.on_train_start()
        trainer.on_train_epoch_start()
        loader = trainer.dataloader_train
        batch = next(loader)
        data_shape = tuple(batch["data"].shape)
        draws = getattr(trainer, "draws_per_image", 1)  # PDDDPMTrainer: images x draws per network call
        net_batch = data_shape[0] * draws
        num_classes = trainer.label_manager.num_segmentation_heads
        net = trainer.network
        try:  # denoisers take (image + noisy mask, t); nnU-Net's segmenters take the image
            fwd = count_flops(net, (net_batch, data_shape[1] + num_classes, *data_shape[2:]), (net_batch,),
                              device=device, dtypes=(torch.float32, torch.long))
        except TypeError:
            fwd = count_flops(net, data_shape, device=device)
        flops_per_step = 3 * fwd
        for _ in range(args.warmup):  # includes torch.compile's first calls
            trainer.train_step(next(loader))
        rows = []
        # the step first, while the augmentation workers' queue is full and they are idle (on a CPU they share
        # the cores with the step)
        reset_peak_memory(device)
        step_s = [_timed(lambda: trainer.train_step(batch), device)[1] for _ in range(args.iterations)]
        step_only = float(np.median(step_s))
        rows.append(_phase("step only (cached batch)", [], step_s, net_batch, flops_per_step, device,
                           images=data_shape[0]))
        data_s, step_s = [], []
        for _ in range(args.iterations):
            b, dt = _timed(lambda: next(loader), device)
            data_s.append(dt)
            step_s.append(_timed(lambda: trainer.train_step(b), device)[1])
        rows.append(_phase("loop (synced)", data_s, step_s, net_batch, flops_per_step, device,
                           images=data_shape[0]))
        _, wall = _timed(lambda: [trainer.train_step(next(loader)) for _ in range(args.iterations)], device)
        rows.append(_phase("loop (as run_training)", [], [], net_batch, flops_per_step, device, wall=wall,
                           steps=args.iterations, busy_s=args.iterations * step_only, images=data_shape[0]))
        drain = 2 * get_allowed_n_proc_DA() + 10 if args.drain is None else args.drain
        for _ in range(drain):  # empty the prefetch queue: what follows is the pipeline's own rate
            next(loader)
        data_s = [_timed(lambda: next(loader), device)[1] for _ in range(args.iterations)]
        rows.append(_phase("data only (queue drained)", data_s, [], net_batch, flops_per_step, device,
                           images=data_shape[0]))
        if hasattr(trainer, "nonfinite"):  # PDDDPMTrainer reads its skip flags one step late
            trainer.nonfinite.flush()
    finally:
        trainer.on_train_end()
        shutil.rmtree(results, ignore_errors=True)
    payload = {"device": device_name(device), "bf16_peak_flops": bf16_peak_flops(device), "torch": torch.__version__,
               "trainer": args.tr, "configuration": args.c, "batch_shape": data_shape, "noise_draws_per_image": draws,
               "compiled": isinstance(net, torch._dynamo.OptimizedModule),
               "nnUNet_n_proc_DA": get_allowed_n_proc_DA(), "forward_gflop": fwd / 1e9, "args": vars(args),
               "rows": rows}
    if args.json:
        write_json(args.json, payload)
    print(f"{args.tr} {args.c} on {payload['device']}: loader batch {data_shape} x {draws} noise draws, "
          f"{fwd / 1e9:.2f} GFLOP forward (x3 per step), compiled={payload['compiled']}, "
          f"nnUNet_n_proc_DA={payload['nnUNet_n_proc_DA']}")
    print(format_table(rows, COLUMNS))
    return payload


if __name__ == "__main__":
    main()
