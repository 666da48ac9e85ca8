"""``nnunet_pdddpm_experiment``: the paper's experiments (Table 1, Fig. 3, Fig. 4, Table 2) on any nnU-Net dataset.

Thin layer: parse, resolve the model folders, build an :class:`ExperimentRunner`, call the
experiment's ``run``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from nnunet_pdddpm.cli import options
from nnunet_pdddpm.cli.checks import (
    check_inputs_against_model,
    check_mirrored_members,
    check_output_folder,
    dataset_name,
)
from nnunet_pdddpm.diffusion import SAMPLERS
from nnunet_pdddpm.errors import PDDDPMUserError, cli_entry
from nnunet_pdddpm.inference.settings import FUSION_FIELDS, check_steps_within_t_prime

HELP = {
    "table1": "Pre-segmenter alone vs vanilla DDPM vs PD-DDPM: Dice, HD95, Jaccard, lesion F1, NFE and seconds "
              "per case (the paper's Table 1).",
    "tprime": "PD-DDPM Dice and mean uncertainty for each T' in -values (the paper's Fig. 3).",
    "ensemble": "Dice mean and standard deviation over -repeats seeds for each ensemble size in -values "
                "(the paper's Fig. 4); samples are reused between sizes.",
    "preseg_quality": "PD-DDPM from an all-background, degraded (-degradations) or other-checkpoint "
                      "(-preseg_checkpoints) pre-segmentation, next to each pre-segmentation's own metrics "
                      "(the paper's Table 2).",
}


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("models and data (as nnunet_pdddpm_predict)")
    options.add_denoiser_options(g, "Configuration of the denoiser, e.g. 2d.")
    options.add_pre_segmenter_options(g)
    g.add_argument("-i", required=True, help="Folder of test images (CASE_0000.nii.gz, ...).")
    g.add_argument("-ref", required=True, help="Folder of the test cases' reference labels (CASE.nii.gz).")
    g.add_argument("-o", required=True, help="Output folder: <experiment>.csv/.json/.png, predictions/, evaluation/.")
    options.add_device_options(g)
    s = p.add_argument_group("sampling (defaults: the denoiser trainer's settings)")
    options.add_sampling_options(s)
    options.add_performance_options(p.add_argument_group("performance (never changes the samples)"))
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_pdddpm_experiment",
        description="Reproduce the PD-DDPM paper's experiments with a trained PDDDPMTrainer (denoiser) and a trained "
                    "pre-segmenter of one nnU-Net dataset. Each experiment writes <experiment>.csv, .json and .png "
                    "into -o, with the segmentations of every setting under -o/predictions/ and their evaluations "
                    "under -o/evaluation/.")
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    common = _common_parser()
    for name, text in HELP.items():
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        if name == "table1":
            p.add_argument("-vanilla_sampler", choices=SAMPLERS, default=None,
                           help="Sampler of vanilla DDPM (default: -sampler).")
            p.add_argument("-vanilla_steps", type=int, default=None,
                           help="Steps of vanilla DDPM from T (default: -steps; paper: all 1000).")
        if name == "tprime":
            p.add_argument("-values", type=int, nargs="+", default=None,
                           help="T' values. Default: 50 100 200 300 400 500 600 700 800 1000 (0 = pre-segmentation).")
        if name == "ensemble":
            p.add_argument("-values", type=int, nargs="+", default=None, help="Ensemble sizes. Default: 1 .. 10.")
            p.add_argument("-repeats", type=int, default=3, help="Repeats with other seeds. Default: 3.")
        if name == "preseg_quality":
            p.add_argument("-degradations", nargs="*", default=None,
                           help="Degraded pre-segmentations: zero, erode:N, dilate:N (in-plane voxels), noise:STD "
                                "(Gaussian noise on the probabilities). Default: zero erode:1 dilate:1 dilate:2 "
                                "noise:0.2 noise:0.4.")
            p.add_argument("-preseg_checkpoints", nargs="*", default=(),
                           help="Other checkpoints of the pre-segmenter to compare, e.g. checkpoint_best.pth.")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    values = getattr(args, "values", None)
    if values is not None:
        low = 0 if args.experiment == "tprime" else 1
        if not values or min(values) < low:
            raise PDDDPMUserError(f"-values must be integers of at least {low}, got {values}.")
    if getattr(args, "repeats", 1) < 1:
        raise PDDDPMUserError(f"-repeats must be at least 1, got {args.repeats}.")
    if getattr(args, "degradations", None):
        from nnunet_pdddpm.experiments.pre_segmentations import Degradation

        for spec in args.degradations:
            Degradation.parse(spec)
    if Path(args.o).resolve() in (Path(args.i).resolve(), Path(args.ref).resolve()):
        raise PDDDPMUserError("-o must differ from -i and -ref.")
    check_output_folder("-o", args.o)
    if args.t_prime is not None and args.experiment != "tprime":
        check_steps_within_t_prime(args.steps, args.t_prime, "-t_prime")
    if values is not None and args.experiment == "tprime" and max(values) > 0:
        smallest = min(v for v in values if v > 0)
        check_steps_within_t_prime(args.steps, smallest, "the smallest nonzero T' in -values")
    options.check_model_options(args)


def check_inputs(args: argparse.Namespace) -> None:
    """The test images against the denoiser's dataset.json and plans, before any checkpoint loads."""
    if Path(args.i).is_dir():  # (a missing -i is named when the runner starts)
        check_inputs_against_model(args.i, dataset_name(args.d), args.tr, args.p, args.c)


def check_settings_before_work(args: argparse.Namespace, runner) -> None:
    """Every sampling setting the experiment will run, checked against the loaded denoiser before anything is
    written (T' values above T or above the denoiser's trained timesteps, -steps above T')."""
    predictor = runner.predictor
    check_mirrored_members(args.mirrored_members, predictor.allowed_mirroring_axes)
    sampling = options.sampling_overrides(args)
    if args.experiment == "ensemble":
        from nnunet_pdddpm.experiments.ensemble import check_unmirrored

        check_unmirrored(sampling)
    T = predictor.diffusion_config.num_train_timesteps
    if args.experiment == "tprime":
        from nnunet_pdddpm.experiments.tprime import DEFAULT_VALUES

        values = sorted(set(args.values or DEFAULT_VALUES))
        limit = min(T, predictor.trained_timesteps)
        if values[-1] > limit:
            why = (f"T={T}, the denoiser's number of diffusion steps" if limit == T else
                   f"this denoiser was trained on timesteps below {limit} (its timestep_range)")
            given = "-values" if args.values else "the default -values"
            raise PDDDPMUserError(f"{given} {' '.join(str(v) for v in values if v > limit)} exceed the largest T' "
                                  f"of {limit} ({why}); give T' values from 0 to {limit}.")
        for value in values:
            runner.settings(**{**sampling, "t_prime": value})
        if values[-1] > 0:
            smallest = min(v for v in values if v > 0)
            check_steps_within_t_prime(args.steps, smallest, "the smallest nonzero T' in -values")
        return
    settings = runner.settings(**sampling)
    if args.t_prime is None:
        check_steps_within_t_prime(args.steps, settings.t_prime, predictor.t_prime_source)
    if args.experiment == "table1":
        vanilla = {"sampler": args.vanilla_sampler, "steps": args.vanilla_steps}
        vanilla_base = {k: v for k, v in sampling.items() if k not in FUSION_FIELDS}  # vanilla: no pre-segmentation
        runner.settings(**{**vanilla_base, **{k: v for k, v in vanilla.items() if v is not None}}, vanilla=True)
        flag = "-steps" if args.vanilla_steps is None else "-vanilla_steps"
        check_steps_within_t_prime(args.vanilla_steps or args.steps, T, "T, for vanilla DDPM", flag)


def make_runner(args: argparse.Namespace):
    """Resolve the model folders in nnUNet_results and load both models (imports here: --help stays fast)."""
    from nnunet_pdddpm.experiments.runner import ExperimentRunner, ModelSelection

    options.device(args.device)
    denoiser_folder, pre_segmenter_folder = options.model_folders(args)
    models = ModelSelection(
        denoiser_folder=denoiser_folder, pre_segmenter_folder=pre_segmenter_folder, folds=options.folds(args.f),
        pre_segmenter_folds=options.folds(args.preseg_f), checkpoint=args.chk,
        pre_segmenter_checkpoint=args.preseg_chk, device=args.device, use_mirroring=not args.disable_tta,
        tile_step_size=args.step_size, trust_checkpoints=args.trust_checkpoints,
        performance=options.performance_settings(args))
    return ExperimentRunner(models, args.i, args.ref, args.o)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = options.parse_args(build_parser(), argv)
    validate_args(args)
    check_inputs(args)
    runner = make_runner(args)
    check_settings_before_work(args, runner)
    output = Path(args.o)
    os.makedirs(output, exist_ok=True)
    sampling = options.sampling_overrides(args)
    if args.experiment == "table1":
        from nnunet_pdddpm.experiments import table1

        table1.run(runner, output, sampling, {"sampler": args.vanilla_sampler, "steps": args.vanilla_steps})
    elif args.experiment == "tprime":
        from nnunet_pdddpm.experiments import tprime

        tprime.run(runner, output, sampling, args.values or tprime.DEFAULT_VALUES)
    elif args.experiment == "ensemble":
        from nnunet_pdddpm.experiments import ensemble

        ensemble.run(runner, output, sampling, args.values or ensemble.DEFAULT_VALUES, args.repeats)
    else:
        from nnunet_pdddpm.experiments import preseg_quality

        degradations = preseg_quality.DEFAULT_DEGRADATIONS if args.degradations is None else args.degradations
        preseg_quality.run(runner, output, sampling, degradations, args.preseg_checkpoints, args.seed)
    print(f"wrote {output / args.experiment}.csv, .json and .png")


if __name__ == "__main__":
    main()
