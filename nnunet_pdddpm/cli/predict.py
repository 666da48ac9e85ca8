"""``nnunet_pdddpm_predict``: PD-DDPM segmentation and uncertainty maps for a folder of images.

Flags follow ``nnUNetv2_predict`` where they apply; ``-preseg_*`` name the pre-segmenter and the
sampling flags the paper's settings (``cli/options.py``). This module only parses, validates and calls.
"""
from __future__ import annotations

import argparse
import os
from os.path import abspath, isdir

from nnunet_pdddpm.cli import options
from nnunet_pdddpm.cli.checks import (
    check_inputs_against_model,
    check_mirrored_members,
    check_output_folder,
    dataset_name,
)
from nnunet_pdddpm.errors import PDDDPMUserError, cli_entry
from nnunet_pdddpm.inference.settings import check_at_least, check_steps_within_t_prime
from nnunet_pdddpm.io_utils import LOCK_FILE, output_folder_lock


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
    options.add_denoiser_options(g)
    options.add_device_options(g)
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
    options.add_pre_segmenter_options(s)
    s.add_argument("-preseg_probabilities", default=None,
                   help="Folder of CASE.npz files from nnUNetv2_predict --save_probabilities of any model; used "
                        "instead of a pre-segmentation model.")
    d = p.add_argument_group("sampling (defaults: the denoiser trainer's settings; PDDDPMTrainer: paper's)")
    options.add_sampling_options(d)
    options.add_uncertainty_options(d)
    options.add_performance_options(p.add_argument_group("performance (never changes the samples)"))
    return p


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
    check_at_least("-npp", args.npp, 1)
    check_at_least("-nps", args.nps, 1)
    if args.num_parts < 1:
        raise PDDDPMUserError(f"-num_parts must be at least 1, got {args.num_parts}.")
    if not 0 <= args.part_id < args.num_parts:
        raise PDDDPMUserError(f"-part_id must be in 0..{args.num_parts - 1} for -num_parts {args.num_parts}.")
    if args.t_prime is not None and not args.vanilla:
        check_steps_within_t_prime(args.steps, args.t_prime, "-t_prime")
    options.check_model_options(args)


def check_inputs(args: argparse.Namespace) -> None:
    """The input images (names, dimensionality, one grid per case, complete files, finite voxels) and the
    ``-preseg_probabilities`` files against the denoiser's dataset.json and plans, before any checkpoint loads."""
    check_inputs_against_model(args.i, dataset_name(args.d), args.tr, args.p, args.c, args.part_id, args.num_parts,
                               None if args.vanilla else args.preseg_probabilities)


def check_sampling(args: argparse.Namespace, predictor) -> None:
    """Checks that need the denoiser: -steps against a T' that comes from the model (or T with --vanilla)."""
    if args.t_prime is None or args.vanilla:
        source = "T, with --vanilla" if args.vanilla else predictor.t_prime_source
        t_prime = predictor.sampling.effective_t_prime(predictor.diffusion_config.num_train_timesteps)
        check_steps_within_t_prime(args.steps, t_prime, source)


def make_predictor(args: argparse.Namespace):
    """Load denoiser and pre-segmenter as the flags say (import here: --help stays fast)."""
    from nnunet_pdddpm.discovery import ensure_trainer_discovery
    from nnunet_pdddpm.inference.pre_segmentation import ModelPreSegmenter, NpzPreSegmentation
    from nnunet_pdddpm.inference.predictor import PDDDPMPredictor

    ensure_trainer_discovery()
    device = options.device(args.device)
    denoiser_folder, pre_segmenter_folder = options.model_folders(args)
    predictor = PDDDPMPredictor(tile_step_size=args.step_size, use_mirroring=not args.disable_tta, device=device,
                                allow_tqdm=not args.disable_progress_bar,
                                performance=options.performance_settings(args), uncertainty_folder=args.o_uncertainty)
    predictor.initialize_from_trained_model_folder(denoiser_folder, options.folds(args.f), args.chk)
    check_mirrored_members(args.mirrored_members, predictor.allowed_mirroring_axes)
    sampling = predictor.sampling.with_overrides(
        **options.sampling_overrides(args), vanilla=args.vanilla, uncertainty=args.uncertainty,
        uncertainty_per_class=args.uncertainty_per_class, soft_pre_segmentation=args.soft_pre_segmentation,
        case_scores=not args.no_case_scores)
    predictor.check_settings(sampling)
    pre_segmentation = None
    if not args.vanilla:
        source = "-t_prime" if args.t_prime is not None else predictor.t_prime_source
        print(f"PD-DDPM with T'={sampling.t_prime} (from {source}).", flush=True)
        if args.preseg_probabilities is not None:
            pre_segmentation = NpzPreSegmentation(args.preseg_probabilities, predictor.plans_manager,
                                                  predictor.configuration_manager,
                                                  predictor.label_manager.num_segmentation_heads)
        else:
            preseg_folds = options.folds(args.preseg_f if args.preseg_f is not None else args.f)
            pre_segmentation = ModelPreSegmenter(pre_segmenter_folder, preseg_folds, args.preseg_chk, device,
                                                 use_mirroring=not args.disable_tta, tile_step_size=args.step_size,
                                                 trust_checkpoints=args.trust_checkpoints)
    predictor.configure(sampling, pre_segmentation)
    return predictor


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = options.parse_args(build_parser(), argv)
    validate_args(args)
    # parts of one run (-part_id of -num_parts) may share -o; two runs of one part may not
    lock_name = LOCK_FILE if args.num_parts == 1 else f"{LOCK_FILE}_part{args.part_id}of{args.num_parts}"
    with output_folder_lock(args.o, "-o", lock_name):
        check_inputs(args)
        predictor = make_predictor(args)
        check_sampling(args, predictor)
        predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                     overwrite=not args.continue_prediction, num_processes_preprocessing=args.npp,
                                     num_processes_segmentation_export=args.nps, num_parts=args.num_parts,
                                     part_id=args.part_id)


if __name__ == "__main__":
    main()
