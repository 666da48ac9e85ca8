"""Cost of the DDPM update alone (no network): diffusers' ``DDPMScheduler.step`` against the tensor step.

Runs a whole reverse process of ``--t_prime`` steps with a null model (the output is the input), so
what is timed is the sampler: coefficient look-ups, host syncs, per-sample noise and the elementwise
update. The network's time per step is what ``benchmark_sampling`` measures; this is the overhead on
top of it.

    python -m benchmarks.benchmark_step -device cpu --batch 20 --patch 128 192
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import device_name, format_table, timed, write_json
from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.diffusion.fast_ddpm import per_sample_noise
from nnunet_pdddpm.diffusion.samplers import reverse_process, reverse_process_reference

COLUMNS = (("path", "path", ""), ("us_per_step", "us/step", ".1f"), ("speedup", "x vs diffusers", ".2f"),
           ("max_abs_diff", "max|diff|", ".1e"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_step", description=__doc__.split("\n")[0])
    p.add_argument("-device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--patch", type=int, nargs="+", default=[128, 192])
    p.add_argument("--t_prime", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    shape = (args.batch, args.classes, *args.patch)
    x = torch.randn(shape, device=device)

    def gens():
        return [torch.Generator(device=device).manual_seed(i) for i in range(args.batch)]

    def null_model(x_t, t):
        return x_t

    def run(process):
        return process(null_model, x, args.t_prime, DiffusionConfig(), "ddpm", None, gens())

    def noise_only():
        g = gens()
        for _ in range(args.t_prime):
            per_sample_noise(x, g)

    results = {}
    for name, fn in (("diffusers DDPMScheduler.step", lambda: run(reverse_process_reference)),
                     ("tensor step (fast_ddpm)", lambda: run(reverse_process)),
                     ("per-sample noise alone", noise_only)):
        fn()  # warm-up
        outs, times = [], []
        for _ in range(args.repeats):
            out, dt = timed(fn, device)
            outs.append(out)
            times.append(dt)
        results[name] = (outs[-1], statistics.median(times) / args.t_prime * 1e6)
    ref_out, ref_us = results["diffusers DDPMScheduler.step"]
    rows = []
    for name, (out, us) in results.items():
        diff = None if out is None else float((out - ref_out).abs().max())
        rows.append({"path": name, "us_per_step": us, "speedup": ref_us / us, "max_abs_diff": diff})
    payload = {"device": device_name(device), "shape": list(shape), "t_prime": args.t_prime, "rows": rows}
    if args.json:
        write_json(args.json, payload)
    print(f"DDPM update, {args.t_prime} steps of {list(shape)} on {payload['device']} (null model; median of "
          f"{args.repeats})")
    print(format_table(rows, COLUMNS))
    return payload


if __name__ == "__main__":
    main()
