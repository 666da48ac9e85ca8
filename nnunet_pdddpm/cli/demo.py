"""``nnunet_pdddpm_demo``: PD-DDPM end to end on synthetic data, from nothing to a table and figures.

Thin layer: parse, check, call :func:`nnunet_pdddpm.demo.pipeline.run_demo`.
"""
from __future__ import annotations

import argparse
import os

from nnunet_pdddpm.cli.spellings import parse_args
from nnunet_pdddpm.errors import PDDDPMUserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_pdddpm_demo",
        description="Run PD-DDPM end to end without any download: make a synthetic white-matter-hyperintensity "
                    "dataset, plan and preprocess it with nnU-Net, train a plain nnU-Net (the pre-segmenter) and "
                    "the PD-DDPM denoiser that refines it with nnUNetv2_train, segment the test cases with nnU-Net "
                    "alone and with PD-DDPM (gpu profile: the paper's recipe, with the attention U-Net and vanilla "
                    "DDPM beside them), and print one table (Dice, HD95, Jaccard, lesion F1, network "
                    "evaluations and seconds per case), also written as JSON/CSV with PNG figures. Run it again "
                    "in the same folder to reuse every finished step.")
    parser.add_argument("-o", "--output", default="pdddpm_demo",
                        help="Work folder holding nnUNet_raw, nnUNet_preprocessed, nnUNet_results, predictions/, "
                             "evaluation/, logs/ and report/ (default: ./pdddpm_demo). The demo sets nnU-Net's "
                             "environment variables for its own commands; yours are not used.")
    parser.add_argument("-profile", choices=("cpu", "gpu", "tiny"), default=None,
                        help="cpu: about 6 minutes on two idle CPU cores (reduced data, short training, "
                             "PDDDPMTrainer's refiner recipe, DDIM with 5 steps). gpu: the paper's recipe (full-size "
                             "data, longer training, T'=300, ensemble 5, DDPM); hours. tiny: for tests only. "
                             "Default: gpu if a CUDA GPU is available, "
                             "else cpu.")
    parser.add_argument("-c", choices=("2d", "3d_fullres"), default="2d",
                        help="nnU-Net configuration of both models (default: 2d, as the paper). 3d_fullres trains "
                             "and samples 3D patches: slower, and not tuned for the profiles' budgets.")
    parser.add_argument("-device", choices=("cpu", "cuda", "mps"), default=None,
                        help="Device for training and inference (default: cuda for the gpu profile, else cpu).")
    parser.add_argument("-np", "--num_processes", type=int, default=None,
                        help="Worker processes for nnU-Net's preprocessing, data augmentation and export "
                             "(default: half the CPU cores, 1 to 8).")
    parser.add_argument("-figures", type=int, default=3, help="Test cases to draw (default: 3).")
    parser.add_argument("-seed", type=int, default=0,
                        help="Seed of both trainings and of the sampling (default: 0); a work folder keeps the models "
                             "of the seed it was made with.")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(), argv)
    import torch

    profile = args.profile or ("gpu" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PDDDPMUserError("-device cuda was requested but no CUDA GPU is available; pass -device cpu.")
    if profile == "gpu" and args.device is None and not torch.cuda.is_available():
        raise PDDDPMUserError("The gpu profile needs a CUDA GPU; use -profile cpu (or pass -device cpu to run it "
                              "slowly on the CPU).")
    if args.num_processes is not None and args.num_processes < 1:  # -np 0 is not "the default"
        raise PDDDPMUserError(f"-np must be at least 1, got {args.num_processes}.")
    num_processes = args.num_processes or max(1, min(8, (os.cpu_count() or 2) // 2))
    if args.figures < 0:
        raise PDDDPMUserError(f"-figures must be at least 0, got {args.figures}.")
    from nnunet_pdddpm.demo.pipeline import run_demo

    if not 0 <= args.seed < 2 ** 31:
        raise PDDDPMUserError(f"-seed must lie in [0, 2**31), got {args.seed}.")
    from dataclasses import replace

    from nnunet_pdddpm.demo.run_profiles import RUN_PROFILES

    run_demo(args.output, replace(RUN_PROFILES[profile], configuration=args.c), args.device, num_processes,
             args.figures, args.seed)


if __name__ == "__main__":
    main()
