"""What one sampled case costs with a denoiser trainer's network on a 3D (or any) configuration.

Builds the trainer's denoiser from the dataset's plans (random weights: cost does not depend on them), takes
preprocessed training cases, and samples each as ``nnunet_pdddpm_predict`` does (nnU-Net's sliding window and
Gaussian, the case's own label map as pre-segmentation), timing ``sample_case`` only (no pre-segmenter, no
export). Prints patches, NFE, seconds per case and per denoiser evaluation, the FLOPs of one evaluation
(FlopCounterMode, batch 1), the estimated activation memory of one sample (``batching.estimate_sample_bytes``, as
``--memory_budget_gb`` uses it) and the process's peak memory (CPU: peak RSS, so run one trainer per process), and
extrapolates to the paper's setting (T' = 300 ancestral steps, ensemble 5) by NFE.

    python -m benchmarks.benchmark_3d_sampling -d 988 -c 3d_fullres -tr PDDDPMTrainer -device cpu
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
import torch

from benchmarks.common import (
    count_flops,
    device_name,
    format_table,
    peak_memory_bytes,
    reset_peak_memory,
    timed,
    write_json,
)

COLUMNS = (("case", "case", ""), ("shape", "preprocessed shape", ""), ("patches", "patches", "d"),
           ("nfe", "NFE", "d"), ("seconds", "s/case", ".1f"), ("s_per_eval", "s/eval", ".3f"),
           ("paper_nfe", "paper NFE", "d"), ("paper_s", "paper s/case (extrapolated)", ".0f"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_3d_sampling", description=__doc__.split("\n")[0])
    p.add_argument("-d", required=True, help="Dataset name or ID (preprocessed in nnUNet_preprocessed).")
    p.add_argument("-c", default="3d_fullres", help="Configuration (default: 3d_fullres).")
    p.add_argument("-tr", default="PDDDPMTrainer", help="Denoiser trainer whose network is measured.")
    p.add_argument("-p", default="nnUNetPlans", help="Plans identifier.")
    p.add_argument("-device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--cases", type=int, default=1, help="Preprocessed training cases to sample (default: 1).")
    p.add_argument("--t_prime", type=int, default=300)
    p.add_argument("--steps", type=int, default=3, help="DDIM steps from T' (default: 3; cost scales with NFE).")
    p.add_argument("--ensemble", type=int, default=1, help="Samples per case (default: 1).")
    p.add_argument("--max_batch_size", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="Untimed samplings of the first case (default: 1).")
    p.add_argument("--json", default=None)
    return p


def _cases(trainer, n: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(identifier, image (C, *shape), label map (*shape)) of the first ``n`` preprocessed cases."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = trainer.preprocessed_dataset_folder
    dataset = infer_dataset_class(folder)(folder)
    out = []
    for key in sorted(dataset.identifiers)[:n]:
        data, seg, _, _ = dataset.load_case(key)
        out.append((key, torch.from_numpy(np.asarray(data)).float(), torch.from_numpy(np.asarray(seg)[0]).long()))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    results = tempfile.mkdtemp(prefix="pdddpm_bench_results_")
    os.environ["nnUNet_results"] = results
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.helpers import empty_cache

    from nnunet_pdddpm.diffusion.encoding import hard_onehot
    from nnunet_pdddpm.discovery import ensure_trainer_discovery
    from nnunet_pdddpm.inference.batching import estimate_sample_bytes
    from nnunet_pdddpm.inference.ensemble_sampling import (
        CaseWindows,
        FoldDenoisers,
        SamplingRun,
        number_of_evaluations,
        sample_case,
    )
    from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings
    from nnunet_pdddpm.precision import autocast

    ensure_trainer_discovery()
    try:
        trainer = get_trainer_from_args(args.d, args.c, 0, args.tr, args.p, device=device)
        trainer.initialize()
        network = trainer.network.eval()
        patch = tuple(trainer.configuration_manager.patch_size)
        num_classes = trainer.label_manager.num_segmentation_heads
        cases = _cases(trainer, args.cases)
    finally:
        shutil.rmtree(results, ignore_errors=True)
    channels = cases[0][1].shape[0]
    flops = count_flops(network, (1, channels + num_classes, *patch), (1,), device=device,
                        dtypes=(torch.float32, torch.long))
    activation = estimate_sample_bytes(network, (channels + num_classes, *patch))
    settings = SamplingSettings(t_prime=args.t_prime, ensemble_size=args.ensemble, sampler="ddim", steps=args.steps)
    performance = PerformanceSettings(max_batch_size=args.max_batch_size)
    paper = SamplingSettings(t_prime=300, ensemble_size=5, sampler="ddpm")
    config = trainer.diffusion_config

    gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=device,
                                dtype=torch.float32)
    rows = []
    reset_peak_memory(device)
    for key, image, seg in cases:
        onehot = torch.nn.functional.one_hot(seg.clamp_min(0), num_classes).movedim(-1, 0).float()
        padded, _ = pad_nd_image(image.to(device), patch, "constant", {"value": 0}, True, None)
        probs, _ = pad_nd_image(onehot.to(device), patch, "constant", {"value": 0}, True, None)
        probs[0][probs.sum(0) == 0] = 1
        x0_pre = hard_onehot(probs[None])[0]
        steps = compute_steps_for_sliding_window(padded.shape[1:], patch, 0.5)
        slicers = [(slice(None), *[slice(s, s + p) for s, p in zip(start, patch)])
                   for start in np.array(np.meshgrid(*steps, indexing="ij")).reshape(len(patch), -1).T.tolist()]
        nfe = number_of_evaluations(len(slicers), 1, settings, args.t_prime)

        def sample():
            return sample_case(FoldDenoisers((network,), config), CaseWindows(padded, x0_pre, slicers, gaussian),
                               settings, key, SamplingRun(performance, device, lambda: autocast(device)))

        for _ in range(args.warmup if not rows else 0):
            sample()
        _, seconds = timed(sample, device)
        paper_nfe = number_of_evaluations(len(slicers), 1, paper, 300)
        rows.append({"case": key, "shape": "x".join(map(str, image.shape[1:])), "patches": len(slicers), "nfe": nfe,
                     "seconds": seconds, "s_per_eval": seconds / nfe, "paper_nfe": paper_nfe,
                     "paper_s": seconds / nfe * paper_nfe})
        empty_cache(device)
    peak, what = peak_memory_bytes(device)
    params = sum(p.numel() for p in network.parameters())
    payload = {"device": device_name(device), "torch": torch.__version__, "trainer": args.tr, "configuration": args.c,
               "patch_size": patch, "parameters": params, "gflop_per_evaluation": flops / 1e9,
               "estimated_activation_gib_per_sample": activation / 2 ** 30,
               "peak_memory_gib": peak / 2 ** 30, "peak_memory_is": what, "args": vars(args), "rows": rows}
    if args.json:
        write_json(args.json, payload)
    print(f"{args.tr} {args.c} on {payload['device']}: patch {patch}, {params / 1e6:.2f} M parameters, "
          f"{flops / 1e9:.1f} GFLOP per denoiser evaluation (batch 1), {activation / 2 ** 30:.2f} GiB activations per "
          f"sample (estimate_sample_bytes), DDIM {args.steps} steps from T'={args.t_prime}, "
          f"ensemble {args.ensemble}, batch {args.max_batch_size}; peak memory {peak / 2 ** 30:.2f} GiB ({what})")
    print(format_table(rows, COLUMNS))
    return payload


if __name__ == "__main__":
    main()
