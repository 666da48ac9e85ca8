"""Seconds, FLOP/s, memory and Dice of PD-DDPM sampling variants on trained models or a synthetic setting.

Rows: the pre-segmenter alone, vanilla DDPM (T=1000), PD-DDPM (T'=300, ensemble 5, ddpm) and PD-DDPM with
ddim / dpm++ in 10 and 20 steps, each after an untimed one-step warm-up (compiling, autotuning) whose
time is reported; ``--ablation`` adds the sampling paths of PD-DDPM (diffusers' step,
tensor step, batch sizes, channels-last, compiled) with their largest probability difference to the
plain path. FLOPs per evaluation are counted by ``FlopCounterMode`` on one batched denoiser call; the
achieved FLOP/s include the pre-segmenter's FLOPs for PD-DDPM rows.

    python -m benchmarks.benchmark_sampling --synthetic --quick -device cpu --json out.json
    python -m benchmarks.benchmark_sampling -d 991 -c 2d -tr PDDDPMTrainer -preseg_tr PDDDPMAttUNetTrainer \\
        -f 0 -i imagesTs -ref labelsTs -device cuda --cases 2 --json out.json
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import (
    bf16_peak_flops,
    count_flops,
    device_name,
    format_table,
    peak_memory_bytes,
    reset_peak_memory,
    timed,
    write_json,
)
from benchmarks.sampling_setups import Setup, dataset_setups, synthetic_setup
from nnunet_pdddpm.inference.batching import estimate_sample_bytes
from nnunet_pdddpm.inference.ensemble_sampling import sampling_batch_size
from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings
from nnunet_pdddpm.precision import autocast

log = logging.getLogger("benchmark_sampling")
VARIANT_KEYS = ("preseg", "vanilla", "pdddpm", "ddim", "dpm++")
COLUMNS = (("variant", "variant", ""), ("configuration", "config", ""), ("seconds_per_case", "s/case", ".3f"),
           ("nfe_per_case", "NFE/case", ".0f"), ("gflop_per_eval", "GFLOP/eval", ".2f"),
           ("tflop_per_s", "TFLOP/s", ".3f"), ("peak_fraction_pct", "% bf16 peak", ".1f"),
           ("peak_memory_gib", "peak mem GiB", ".2f"), ("dice", "Dice", ".3f"),
           ("warm_up_s", "warm-up s", ".2f"), ("max_abs_dprob_vs_plain", "max|dp| vs plain", ".1e"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_sampling", description=__doc__.split("\n")[0])
    p.add_argument("-d", help="Dataset name or ID (trained models in nnUNet_results).")
    p.add_argument("-c", action="append", help="Configuration (repeatable: -c 2d -c 3d_fullres).")
    p.add_argument("-tr", default="PDDDPMTrainer", help="Denoiser trainer.")
    p.add_argument("-preseg_tr", default="PDDDPMAttUNetTrainer", help="Pre-segmenter trainer.")
    p.add_argument("-p", default="nnUNetPlans", help="Plans identifier.")
    p.add_argument("-f", nargs="+", default=None, help="Folds (default: every trained fold).")
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("-i", help="Folder of test images (CASE_0000.nii.gz ...).")
    p.add_argument("-ref", help="Folder of reference labels (CASE.nii.gz).")
    p.add_argument("-device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--cases", type=int, default=None, help="Cases to run (default: 1 with --quick, else 2).")
    p.add_argument("--json", default=None, help="Write all numbers to this JSON file.")
    p.add_argument("--synthetic", action="store_true", help="Random-weight networks, no dataset (paper's size).")
    p.add_argument("--quick", action="store_true",
                   help="Few steps (3 for ddpm/vanilla, 2 and 3 for ddim/dpm++), ensemble 2; with --synthetic a tiny "
                        "network: for CPU checks.")
    p.add_argument("--preset", choices=("paper", "quick", "wmh"), default=None,
                   help="Synthetic network and case (default: quick with --quick, else paper; wmh: the default "
                        "trainer's denoiser on a 200x240x56 scan, 56 patches).")
    p.add_argument("--variants", default=",".join(VARIANT_KEYS), help=f"Subset of {','.join(VARIANT_KEYS)}.")
    p.add_argument("--ablation", action="store_true", help="Add PD-DDPM rows for each sampling path.")
    p.add_argument("--batch_sizes", default="", help="With --ablation: extra batch sizes, e.g. 5,40,80.")
    p.add_argument("--t_prime", type=int, default=300)
    p.add_argument("--ensemble", type=int, default=None, help="Default: 2 with --quick, else 5 (paper).")
    p.add_argument("--max_batch_size", type=int, default=None,
                   help="Samples per call (default: 20 synthetic = 4 patches x 5, else 16).")
    p.add_argument("--memory_budget_gb", type=float, default=None)
    p.add_argument("--channels_last", action="store_true", help="Method rows: channels-last denoiser.")
    p.add_argument("--compile", action="store_true", help="Method rows (and an ablation row): compiled denoiser.")
    p.add_argument("--seed", type=int, default=0)
    return p


def method_variants(args) -> list[tuple[str, str, dict | None]]:
    """(key, label, SamplingSettings and PerformanceSettings fields or None for the pre-segmenter alone)."""
    e, tp = args.ensemble, args.t_prime
    ddpm_steps = 3 if args.quick else None
    fast_steps = (2, 3) if args.quick else (10, 20)
    base = dict(ensemble_size=e, seed=args.seed, max_batch_size=args.max_batch_size,
                memory_budget_gb=args.memory_budget_gb, channels_last=args.channels_last,
                compile=args.compile)
    some = f" ({ddpm_steps} steps)" if ddpm_steps else ""
    rows = [("preseg", "pre-segmenter", None),
            ("vanilla", f"vanilla DDPM T=1000 x{e}{some}", dict(base, vanilla=True, sampler="ddpm", steps=ddpm_steps)),
            ("pdddpm", f"PD-DDPM T'={tp} x{e} ddpm{some}", dict(base, t_prime=tp, sampler="ddpm", steps=ddpm_steps))]
    for sampler in ("ddim", "dpm++"):
        for n in fast_steps:
            rows.append((sampler, f"PD-DDPM T'={tp} x{e} {sampler} {n} steps", dict(base, t_prime=tp, sampler=sampler,
                                                                                   steps=n)))
    wanted = set(args.variants.split(","))
    return [r for r in rows if r[0] in wanted]


def ablation_variants(args) -> list[tuple[str, dict]]:
    """PD-DDPM ddpm through each sampling path; layouts first plain, then channels-last (the network is converted)."""
    base = dict(method_variants(argparse.Namespace(**{**vars(args), "variants": "pdddpm"}))[0][2],
                channels_last=False, compile=False)
    rows = [("path: plain (diffusers step)", dict(base, reference_sampler=True)),
            ("path: tensor step", dict(base))]
    for b in [int(b) for b in args.batch_sizes.split(",") if b]:
        rows.append((f"path: tensor step, batch {b}", dict(base, max_batch_size=b)))
    rows.append(("path: tensor step + channels_last", dict(base, channels_last=True)))
    if args.compile:
        rows.append(("path: + channels_last + compile", dict(base, channels_last=True, compile=True)))
    return rows


def _row(setup: Setup, label: str, seconds: list[float], nfe: float, flops_per_eval: float | None,
         extra_flops: float, dices: list[float], device: torch.device) -> dict:
    secs = float(np.mean(seconds))
    flop_per_s = (nfe * (flops_per_eval or 0) + extra_flops) / secs if secs > 0 else None
    peak = bf16_peak_flops(device)
    mem, mem_kind = peak_memory_bytes(device)
    return {"variant": label, "configuration": setup.name, "seconds_per_case": secs, "seconds": seconds,
            "nfe_per_case": nfe, "gflop_per_eval": None if flops_per_eval is None else flops_per_eval / 1e9,
            "tflop_per_s": None if flop_per_s is None else flop_per_s / 1e12,
            "peak_fraction_pct": None if (peak is None or flop_per_s is None) else 100 * flop_per_s / peak,
            "peak_memory_gib": mem / 2 ** 30, "memory_kind": mem_kind,
            "dice": float(np.nanmean(dices)) if not np.all(np.isnan(dices)) else None, "dice_per_case": dices}


def run_pre_segmenter(setup: Setup, device: torch.device) -> tuple[dict, float, float]:
    """The pre-segmenter alone; returns the row, evaluations per case and FLOPs per evaluation."""
    patch = tuple(setup.predictor.configuration_manager.patch_size)
    channels = setup.cases[0].data.shape[0]
    flops = count_flops(setup.pre_segmentation_network, (1, channels, *patch), device=device)
    calls = []
    hook = setup.pre_segmentation_network.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    reset_peak_memory(device)
    seconds, dices = [], []
    try:
        for case in setup.cases:
            probs, dt = timed(lambda: setup.pre_segmenter.probabilities(case.data, case.properties, case.key), device)
            seconds.append(dt)
            dices.append(setup.dice(probs.cpu(), case))
    finally:
        hook.remove()
    nfe = sum(calls) / len(setup.cases)
    return _row(setup, "pre-segmenter", seconds, nfe, flops, 0.0, dices, device), nfe, flops


def split_settings(fields: dict) -> tuple[SamplingSettings, PerformanceSettings]:
    """A variant's fields as the method's settings and the performance knobs."""
    knobs = {f.name for f in dataclasses.fields(PerformanceSettings)}
    return (SamplingSettings(**{k: v for k, v in fields.items() if k not in knobs}),
            PerformanceSettings(**{k: v for k, v in fields.items() if k in knobs}))


def run_sampling(setup: Setup, label: str, fields: dict, device: torch.device, denoiser_flops: float,
                 pre_flops_per_case: float, reference: list[torch.Tensor] | None) -> tuple[dict, list[torch.Tensor]]:
    """One PD-DDPM / vanilla variant on every case, after an untimed warm-up: the first case with one ddim step
    (the same batch shapes, so cuDNN's autotuning and a compiled graph's capture happen there)."""
    predictor, pre = setup.predictor, setup.pre_segmenter
    sampling, performance = split_settings(fields)
    c = setup.cases[0]
    warm = dataclasses.replace(sampling, sampler="ddim", steps=1)
    _, warm_up = timed(lambda: predictor.predict_case(c.data, c.properties, c.key, warm, pre, performance), device)
    reset_peak_memory(device)
    seconds, dices, probs, nfes = [], [], [], []
    for case in setup.cases:
        result, dt = timed(lambda: predictor.predict_case(case.data, case.properties, case.key, sampling, pre,
                                                          performance), device)
        seconds.append(dt)
        nfes.append(result.nfe)
        probs.append(result.probabilities.cpu())
        dices.append(setup.dice(probs[-1], case))
    extra = 0.0 if sampling.vanilla else pre_flops_per_case  # predict_case runs the pre-segmenter
    row = _row(setup, label, seconds, float(np.mean(nfes)), denoiser_flops, extra, dices, device)
    row["warm_up_s"] = warm_up
    row["settings"] = {**sampling.to_dict(), **performance.to_dict()}
    if reference is not None:
        row["max_abs_dprob_vs_plain"] = max(float((a - b).abs().max()) for a, b in zip(probs, reference))
        row["seg_agreement_vs_plain"] = float(np.mean([(a.argmax(0) == b.argmax(0)).float().mean().item()
                                                       for a, b in zip(probs, reference)]))
    return row, probs


def attention_report(setup: Setup, device: torch.device) -> list[dict]:
    """Every ``scaled_dot_product_attention`` call of one denoiser forward (batch 1), and on CUDA which fused
    backend accepts its q/k/v (shape, dtype, strides) as the network produces them."""
    net = setup.predictor.networks[0]
    calls = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q, k, v))
        return original(q, k, v, *args, **kwargs)

    patch = tuple(setup.predictor.configuration_manager.patch_size)
    x = torch.randn(1, setup.cases[0].data.shape[0] + net.num_classes, *patch, device=device)
    F.scaled_dot_product_attention = spy
    try:
        with torch.no_grad(), autocast(device):
            net(x, torch.zeros(1, dtype=torch.long, device=device))
    finally:
        F.scaled_dot_product_attention = original
    report = []
    for q, k, v in calls:
        entry = {"q_shape": list(q.shape), "dtype": str(q.dtype), "q_stride": list(q.stride())}
        if device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
                try:
                    with sdpa_kernel([backend]):
                        original(q, k, v)
                    entry[backend.name] = "ok"
                except RuntimeError as e:
                    entry[backend.name] = f"no: {str(e).splitlines()[0][:80]}"
        report.append(entry)
    return report


def benchmark_setup(setup: Setup, args, device: torch.device) -> tuple[list[dict], dict]:
    net = setup.predictor.networks[0]
    patch = tuple(setup.predictor.configuration_manager.patch_size)
    in_shape = (setup.cases[0].data.shape[0] + net.num_classes, *patch)
    b = sampling_batch_size(PerformanceSettings(max_batch_size=args.max_batch_size,
                                                memory_budget_gb=args.memory_budget_gb), net, in_shape)
    denoiser_flops = count_flops(net, (b, *in_shape), (b,), device=device,
                                 dtypes=(torch.float32, torch.long)) / b
    sample_bytes = estimate_sample_bytes(net, in_shape)
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    parameters = sum(p.numel() for p in net.parameters())
    info = {"configuration": setup.name, "batch_size": b, "denoiser_parameters": parameters,
            "estimated_activation_bytes_per_sample": sample_bytes,
            "estimated_peak_bytes": weights + b * sample_bytes, "attention": attention_report(setup, device)}
    rows, pre_flops_per_case = [], 0.0
    variants = method_variants(args)
    if any(k == "preseg" for k, _, _ in variants) or any(f and not f.get("vanilla") for _, _, f in variants):
        pre_row, pre_nfe, pre_flops = run_pre_segmenter(setup, device)
        pre_flops_per_case = pre_nfe * pre_flops
        if any(k == "preseg" for k, _, _ in variants):
            rows.append(pre_row)
    for _, label, fields in variants:
        if fields is not None:
            log.info("%s: %s", setup.name, label)
            rows.append(run_sampling(setup, label, fields, device, denoiser_flops, pre_flops_per_case, None)[0])
    if args.ablation:
        reference = None
        for label, fields in ablation_variants(args):
            log.info("%s: %s", setup.name, label)
            row, probs = run_sampling(setup, label, fields, device, denoiser_flops, pre_flops_per_case, reference)
            reference = reference or probs
            rows.append(row)
            if label == "path: tensor step":
                info["measured_peak_bytes_tensor_step"] = row["peak_memory_gib"] * 2 ** 30
    return rows, info


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    if not args.synthetic and not (args.d and args.c and args.i and args.ref):
        build_parser().error("give -d, -c, -i and -ref for a dataset, or --synthetic")
    device = torch.device(args.device)
    args.cases = args.cases or (1 if args.quick else 2)
    args.ensemble = args.ensemble or (2 if args.quick else 5)
    args.max_batch_size = args.max_batch_size or (4 * args.ensemble if args.synthetic else 16)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if args.synthetic:
        args.preset = args.preset or ("quick" if args.quick else "paper")
        setups = [synthetic_setup(args.preset, device, args.cases, args.seed)]
    else:
        folds = None if args.f is None else [f if f == "all" else int(f) for f in args.f]
        setups = dataset_setups(args.d, args.c, args.tr, args.preseg_tr, args.p, folds, args.chk, args.i, args.ref,
                                args.cases, device)
    rows, infos = [], []
    for setup in setups:
        r, info = benchmark_setup(setup, args, device)
        rows += r
        infos.append(info)
    payload = {"device": device_name(device), "bf16_peak_flops": bf16_peak_flops(device),
               "torch": torch.__version__, "args": vars(args), "setups": infos, "rows": rows}
    if args.json:
        write_json(args.json, payload)
    for info in infos:
        print(f"{info['configuration']}: batch {info['batch_size']}, {info['denoiser_parameters'] / 1e6:.3g} M "
              f"parameters, activation estimate {info['estimated_activation_bytes_per_sample'] / 2 ** 20:.1f} "
              f"MiB/sample -> {info['estimated_peak_bytes'] / 2 ** 30:.2f} GiB with weights; attention calls: "
              f"{len(info['attention'])}")
    print(f"device: {payload['device']}; {len(setups[0].cases)} case(s); Dice is meaningless with --synthetic"
          if args.synthetic else f"device: {payload['device']}; {len(setups[0].cases)} case(s)")
    print(format_table(rows, COLUMNS))
    return payload


if __name__ == "__main__":
    main()
