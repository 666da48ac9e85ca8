"""``nnunet_pdddpm_predict``: PD-DDPM segmentation and uncertainty maps for a folder of images.

Flags follow ``nnUNetv2_predict`` where they apply; ``-preseg_*`` name the pre-segmenter and the
sampling flags the paper's settings. This module only parses, validates and calls.
"""
from __future__ import annotations

import argparse
import os
from os.path import abspath, isdir

import torch

from nnunet_pdddpm.cli import TRUST_HELP
from nnunet_pdddpm.cli.checks import (
    check_inputs_against_model,
    check_output_folder,
    check_steps_within_t_prime,
    dataset_name,
    require_nnunet_results,
)
from nnunet_pdddpm.diffusion import SAMPLERS
from nnunet_pdddpm.errors import PDDDPMUserError, cli_entry
from nnunet_pdddpm.inference.settings import UNCERTAINTY_KINDS, SamplingSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_pdddpm_predict",
        description="PD-DDPM inference: a pre-segmentation (any nnU-Net model, or saved probabilities) is diffused to "
                    "T' and denoised by a PDDDPMTrainer model in T' steps; an ensemble of samples gives the "
                    "segmentation (CASE + file ending in -o) and a per-voxel uncertainty map "
                    "(-o/uncertainty/CASE_uncertainty + file ending).")
    g = p.add_argument_group("input/output and denoiser (as nnUNetv2_predict)")
    g.add_argument("-i", required=True, help="Input folder with CASE_0000.nii.gz ... (one file per channel).")
    g.add_argument("-o", required=True, help="Output folder for segmentations (created; must differ from -i).")
    g.add_argument("-d", required=True, help="Dataset name or ID.")
    g.add_argument("-c", required=True, help="Configuration of the denoiser, e.g. 2d or 3d_fullres.")
    g.add_argument("-tr", default="PDDDPMTrainer", help="Trainer class of the denoiser. Default: PDDDPMTrainer.")
    g.add_argument("-p", default="nnUNetPlans", help="Plans identifier of the denoiser. Default: nnUNetPlans.")
    g.add_argument("-f", nargs="+", default=None,
                   help="Denoiser folds; samples of all folds form the ensemble. Default: every trained fold.")
    g.add_argument("-chk", default="checkpoint_final.pth", help="Denoiser checkpoint. Default: checkpoint_final.pth.")
    g.add_argument("-step_size", type=float, default=0.5, help="Sliding-window step as a fraction of the patch.")
    g.add_argument("--disable_tta", action="store_true",
                   help="Disable the pre-segmenter's test-time mirroring (the denoiser's ensemble is unaffected).")
    g.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"), help="Device. Default: cuda.")
    g.add_argument("-npp", type=int, default=2, help="Processes for preprocessing. Default: 2.")
    g.add_argument("-nps", type=int, default=2, help="Threads exporting finished cases while sampling goes on.")
    g.add_argument("-num_parts", type=int, default=1, help="Split the cases into this many parts (as nnU-Net).")
    g.add_argument("-part_id", type=int, default=0, help="Which part this call predicts (0 .. num_parts-1).")
    g.add_argument("--continue_prediction", action="store_true",
                   help="Skip cases whose outputs are complete (segmentation, uncertainty and, if asked, npz).")
    g.add_argument("--save_probabilities", action="store_true",
                   help="Also write CASE.npz (ensemble-mean class probabilities) and CASE.pkl, as nnU-Net does.")
    g.add_argument("-o_uncertainty", default=None,
                   help="Folder for uncertainty maps. Default: -o/uncertainty (kept out of the segmentation folder "
                        "so nnU-Net's evaluation only sees segmentations).")
    g.add_argument("--disable_progress_bar", action="store_true", help="No progress bars.")
    s = p.add_argument_group("pre-segmenter (one of: a trained nnU-Net model, or saved probabilities)")
    s.add_argument("-preseg_tr", default="nnUNetTrainer",
                   help="Trainer of the pre-segmentation model (e.g. PDDDPMAttUNetTrainer). Default: nnUNetTrainer.")
    s.add_argument("-preseg_c", default=None, help="Its configuration. Default: -c.")
    s.add_argument("-preseg_p", default="nnUNetPlans", help="Its plans identifier. Default: nnUNetPlans.")
    s.add_argument("-preseg_f", nargs="+", default=None, help="Its folds. Default: the same as -f.")
    s.add_argument("-preseg_chk", default="checkpoint_final.pth", help="Its checkpoint. Default: checkpoint_final.pth.")
    s.add_argument("-preseg_probabilities", default=None,
                   help="Folder of CASE.npz files from nnUNetv2_predict --save_probabilities of any model; used "
                        "instead of a pre-segmentation model.")
    s.add_argument("--trust_checkpoints", action="store_true", help=TRUST_HELP)
    d = p.add_argument_group("sampling (defaults: the denoiser trainer's settings; PDDDPMTrainer: paper's)")
    d.add_argument("--t_prime", type=int, default=None,
                   help="T': steps of the reverse process (0..T). Default: the T' the denoiser's final validation "
                        "chose (fold_X/pdddpm_t_prime.json), else the trainer's (paper: 300).")
    d.add_argument("--ensemble", type=int, default=None,
                   help="Samples per case (paper: 5), dealt out over the folds: 5 samples from 5 folds are one each, "
                        "from 2 folds 3 + 2. Default: the denoiser trainer's ensemble_size.")
    d.add_argument("--ensemble_per_fold", action="store_true",
                   help="Draw --ensemble samples from every fold instead (folds x --ensemble in all).")
    d.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="ddpm (ancestral, paper), ddim or dpm++ (deterministic, use with --steps).")
    d.add_argument("--steps", type=int, default=None,
                   help="Network evaluations from T' to 0. Default: every step for ddpm.")
    d.add_argument("--seed", type=int, default=0, help="Seed; the same seed gives the same outputs.")
    d.add_argument("--vanilla", action="store_true",
                   help="Baseline: start from pure noise at T and run the full reverse process (no pre-segmenter).")
    d.add_argument("--uncertainty", choices=UNCERTAINTY_KINDS, default="variance",
                   help="variance across the ensemble (paper), predictive entropy, or none.")
    d.add_argument("--uncertainty_per_class", action="store_true",
                   help="Also write one map per foreground class (CASE_uncertainty_class1.nii.gz, ...): that "
                        "class's variance, or with entropy its binary entropy. CASE_uncertainty stays their mean.")
    d.add_argument("--soft_preseg", action="store_true",
                   help="Encode the pre-segmenter's probabilities (2p-1) instead of its argmax (paper: argmax).")
    d.add_argument("--max_batch_size", type=int, default=16, help="Samples (patches x members) per network call.")
    d.add_argument("--memory_budget_gb", type=float, default=None,
                   help="Cap the batch further from an estimate of activation memory per sample (GPU).")
    d.add_argument("--channels_last", action="store_true", help="Channels-last memory format for the denoiser.")
    d.add_argument("--compile", action="store_true",
                   help="torch.compile the fixed-shape denoiser call (CUDA graphs on a GPU; compiling takes ~30-60 s).")
    return p


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PDDDPMUserError("-device cuda was requested but no CUDA GPU is available; pass -device cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise PDDDPMUserError("-device mps was requested but MPS is not available; pass -device cpu.")
    return torch.device(name)


def _folds(values):
    if values is None:
        return None
    try:
        return [v if v == "all" else int(v) for v in values]
    except ValueError:
        raise PDDDPMUserError(f"Folds must be integers or 'all', got {' '.join(values)}.") from None


def _dataset_name(dataset: str) -> str:
    return dataset_name(dataset)


def validate_args(args: argparse.Namespace) -> None:
    """Cheap checks before any model is loaded."""
    if not isdir(args.i):
        what = "is a file, not a folder" if os.path.exists(args.i) else "does not exist"
        raise PDDDPMUserError(f"Input folder -i {args.i} {what}; give the folder of input images "
                              f"(CASE_0000.nii.gz, ...).")
    if abspath(args.i) == abspath(args.o):
        raise PDDDPMUserError("-o must differ from -i: predictions would mix with the input images.")
    check_output_folder("-o", args.o)
    if args.o_uncertainty is not None:
        check_output_folder("-o_uncertainty", args.o_uncertainty)
    if args.num_parts < 1:
        raise PDDDPMUserError(f"-num_parts must be at least 1, got {args.num_parts}.")
    if not 0 <= args.part_id < args.num_parts:
        raise PDDDPMUserError(f"-part_id must be in 0..{args.num_parts - 1} for -num_parts {args.num_parts}.")
    if not 0 < args.step_size <= 1:
        raise PDDDPMUserError(f"-step_size must be in (0, 1], got {args.step_size}.")
    if args.t_prime is not None and args.t_prime < 0:
        raise PDDDPMUserError(f"--t_prime must be between 0 and T, got {args.t_prime}.")
    if args.ensemble is not None and args.ensemble < 1:
        raise PDDDPMUserError(f"--ensemble must be at least 1, got {args.ensemble}.")
    if args.steps is not None and args.steps < 1:
        raise PDDDPMUserError(f"--steps must be at least 1, got {args.steps}.")
    if args.max_batch_size < 1:
        raise PDDDPMUserError(f"--max_batch_size must be at least 1, got {args.max_batch_size}.")
    if args.t_prime is not None and not args.vanilla:
        check_steps_within_t_prime(args.steps, args.t_prime, "--t_prime")
    require_nnunet_results()
    dataset_name(args.d)


def check_inputs(args: argparse.Namespace) -> None:
    """The input images (names, dimensionality, complete files, finite voxels) against the denoiser's
    dataset.json and plans, before any checkpoint loads."""
    check_inputs_against_model(args.i, dataset_name(args.d), args.tr, args.p, args.c, args.part_id, args.num_parts)


def check_sampling(args: argparse.Namespace, predictor) -> None:
    """Checks that need the denoiser: --steps against a T' that comes from the model (or T with --vanilla)."""
    if args.t_prime is None or args.vanilla:
        source = "T, with --vanilla" if args.vanilla else predictor.t_prime_source
        t_prime = predictor.sampling.effective_t_prime(predictor.diffusion_config.num_train_timesteps)
        check_steps_within_t_prime(args.steps, t_prime, source)


def make_predictor(args: argparse.Namespace):
    """Load denoiser and pre-segmenter as the flags say (import here: --help stays fast)."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_pdddpm.inference.pre_segmentation import ModelPreSegmenter, NpzPreSegmentation
    from nnunet_pdddpm.inference.predictor import PDDDPMPredictor
    from nnunet_pdddpm.trainers.discovery import ensure_trainer_discovery

    ensure_trainer_discovery()
    device = _device(args.device)
    dataset = _dataset_name(args.d)
    predictor = PDDDPMPredictor(tile_step_size=args.step_size, use_mirroring=not args.disable_tta, device=device,
                                allow_tqdm=not args.disable_progress_bar)
    predictor.initialize_from_trained_model_folder(get_output_folder(dataset, args.tr, args.p, args.c),
                                                   _folds(args.f), args.chk)
    s = predictor.sampling
    predictor.sampling = SamplingSettings(
        t_prime=s.t_prime if args.t_prime is None else args.t_prime,
        ensemble_size=s.ensemble_size if args.ensemble is None else args.ensemble,
        sampler=s.sampler if args.sampler is None else args.sampler,
        steps=(s.steps if args.sampler is None else None) if args.steps is None else args.steps,
        ensemble_per_fold=args.ensemble_per_fold, seed=args.seed, vanilla=args.vanilla, uncertainty=args.uncertainty,
        per_class_uncertainty=args.uncertainty_per_class,
        soft_pre_segmentation=args.soft_preseg, max_batch_size=args.max_batch_size,
        memory_budget_gb=args.memory_budget_gb, channels_last=args.channels_last, compile_denoiser=args.compile)
    predictor.check_settings(predictor.sampling)
    if not args.vanilla:
        source = "--t_prime" if args.t_prime is not None else predictor.t_prime_source
        print(f"PD-DDPM with T'={predictor.sampling.t_prime} (from {source}).", flush=True)
    predictor.uncertainty_folder = args.o_uncertainty
    if not args.vanilla:
        if args.preseg_probabilities is not None:
            pre = NpzPreSegmentation(args.preseg_probabilities, predictor.plans_manager,
                                     predictor.configuration_manager, predictor.label_manager.num_segmentation_heads)
        else:
            folder = get_output_folder(dataset, args.preseg_tr, args.preseg_p, args.preseg_c or args.c)
            pre = ModelPreSegmenter(folder, _folds(args.preseg_f if args.preseg_f is not None else args.f),
                                    args.preseg_chk, device, use_mirroring=not args.disable_tta,
                                    tile_step_size=args.step_size, trust_checkpoints=args.trust_checkpoints)
        predictor.set_pre_segmenter(pre)
    return predictor


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    validate_args(args)
    check_inputs(args)
    predictor = make_predictor(args)
    check_sampling(args, predictor)
    os.makedirs(args.o, exist_ok=True)
    predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                 overwrite=not args.continue_prediction, num_processes_preprocessing=args.npp,
                                 num_processes_segmentation_export=args.nps, num_parts=args.num_parts,
                                 part_id=args.part_id)


if __name__ == "__main__":
    main()
