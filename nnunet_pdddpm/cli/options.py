"""Command-line options shared by the console scripts: one spelling, one default and one check per concept.

nnU-Net's convention: one dash for options with a value (``-t_prime 300``), two for switches
(``--vanilla``); the spellings of 0.1 still parse (``spellings.py``).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from nnunet_pdddpm.cli.checks import dataset_name, require_nnunet_results
from nnunet_pdddpm.cli.spellings import parse_args  # noqa: F401  (re-exported: the scripts' one import)
from nnunet_pdddpm.diffusion import SAMPLERS
from nnunet_pdddpm.discovery import DEFAULT_PRE_SEGMENTER_TRAINER
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.settings import UNCERTAINTY_KINDS, PerformanceSettings, SamplingSettings, check_at_least

#: ``--trust_checkpoints`` of every command that loads a pre-segmenter (one text, one meaning)
TRUST_HELP = ("Unpickle the pre-segmenter's checkpoints in full (torch.load(weights_only=False), as nnU-Net does): "
              "the checkpoint may then run code, so use it only for files you trust. Without it, checkpoints load "
              "with torch.load(weights_only=True) plus numpy's scalar types, and anything else is refused.")


# ---------------------------------------------------------------- option groups
def add_denoiser_options(group, configuration_help: str = "Configuration of the denoiser, e.g. 2d or 3d_fullres.",
                         ) -> None:
    """``-d -c -tr -p -f -chk`` as ``nnUNetv2_predict`` spells them, for the denoiser."""
    group.add_argument("-d", required=True, help="Dataset name or ID.")
    group.add_argument("-c", required=True, help=configuration_help)
    group.add_argument("-tr", default="PDDDPMTrainer", help="Trainer class of the denoiser. Default: PDDDPMTrainer.")
    group.add_argument("-p", default="nnUNetPlans", help="Plans identifier of the denoiser. Default: nnUNetPlans.")
    group.add_argument("-f", nargs="+", default=None,
                       help="Denoiser folds; samples of all folds form the ensemble. Default: every trained fold.")
    group.add_argument("-chk", default="checkpoint_final.pth",
                       help="Denoiser checkpoint. Default: checkpoint_final.pth.")


def add_pre_segmenter_options(group) -> None:
    """``-preseg_tr -preseg_c -preseg_p -preseg_f -preseg_chk --trust_checkpoints``: the pre-segmentation model."""
    group.add_argument("-preseg_tr", default=DEFAULT_PRE_SEGMENTER_TRAINER,
                       help=f"Trainer of the pre-segmentation model, any nnU-Net model (e.g. PDDDPMAttUNetTrainer, "
                            f"the paper's). Default: {DEFAULT_PRE_SEGMENTER_TRAINER}.")
    group.add_argument("-preseg_c", default=None, help="Its configuration. Default: -c.")
    group.add_argument("-preseg_p", default="nnUNetPlans", help="Its plans identifier. Default: nnUNetPlans.")
    group.add_argument("-preseg_f", nargs="+", default=None, help="Its folds. Default: the same as -f.")
    group.add_argument("-preseg_chk", default="checkpoint_final.pth",
                       help="Its checkpoint. Default: checkpoint_final.pth.")
    group.add_argument("--trust_checkpoints", action="store_true", help=TRUST_HELP)


def add_device_options(group) -> None:
    group.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"), help="Device. Default: cuda.")
    group.add_argument("-step_size", type=float, default=0.5,
                       help="Sliding-window step as a fraction of the patch. Default: 0.5.")
    group.add_argument("--disable_tta", action="store_true",
                       help="Disable the pre-segmenter's test-time mirroring (4 or 8 times fewer of its network "
                            "evaluations). The denoiser's members are mirrored or not by --mirrored_members, which "
                            "costs nothing extra.")


def add_sampling_options(group) -> None:
    """The method's settings common to predict and the experiments (defaults: the denoiser trainer's)."""
    group.add_argument("-t_prime", type=int, default=None,
                       help="T': steps of the reverse process (0..T). Default: the T' the denoiser's final validation "
                            "chose (fold_X/pdddpm_t_prime.json), else the trainer's (paper: 300).")
    group.add_argument("-ensemble_size", type=int, default=None,
                       help="Samples per case (paper: 5), dealt out over the folds: 5 samples from 5 folds are one "
                            "each, from 2 folds 3 + 2. Default: the denoiser trainer's ensemble_size.")
    group.add_argument("--ensemble_per_fold", action="store_true",
                       help="Draw -ensemble_size samples from every fold instead (folds x -ensemble_size in all).")
    group.add_argument("-sampler", choices=SAMPLERS, default=None,
                       help="ddpm (ancestral, paper), ddim or dpm++ (deterministic, use with -steps).")
    group.add_argument("-steps", type=int, default=None,
                       help="Network evaluations from T' to 0. Default: the trainer's (PDDDPMTrainer: every step).")
    group.add_argument("-seed", type=int, default=0, help="Seed; the same seed gives the same outputs. Default: 0.")
    group.add_argument("-preseg_weight", type=float, default=None,
                       help="Mix the pre-segmenter's probabilities into the result: (1 - w) * ensemble mean + w * "
                            "pre-segmenter, w in [0, 1]; the entropy map is then the entropy of the result. "
                            "Default: the denoiser trainer's (PDDDPMTrainer: 0.25; PDDDPMTrainer_paper: 0).")
    group.add_argument("-confidence_gate", type=float, default=None,
                       help="Keep the ensemble's probabilities only where its largest mean class probability is at "
                            "least this, elsewhere the pre-segmenter's; in (1/K, 1] for K classes. Default: no gate.")
    lesions = group.add_mutually_exclusive_group()
    lesions.add_argument("--lesion_gate", dest="lesion_gate", action="store_const", const=True, default=None,
                         help="Leave lesion detection to the pre-segmenter: a lesion (connected component) the result "
                              "adds where the pre-segmenter has none, or one of the pre-segmenter's it no longer "
                              "touches, takes the pre-segmenter's probabilities; the denoiser only reshapes lesions. "
                              "Default: the denoiser trainer's (PDDDPMTrainer_paper: off).")
    lesions.add_argument("--no_lesion_gate", dest="lesion_gate", action="store_const", const=False,
                         help="No lesion gate, whatever the denoiser trainer's default.")
    mirrors = group.add_mutually_exclusive_group()
    mirrors.add_argument("--mirrored_members", dest="mirrored_members", action="store_const", const=True,
                         default=None,
                         help="Mirror the members as nnU-Net's test-time augmentation does: member m sees the case "
                              "mirrored along the m-th of the model's mirror combinations (none, each axis, pairs, "
                              "...) and its result is mirrored back; no extra network evaluation. Default: the "
                              "denoiser trainer's (PDDDPMTrainer_paper: off); a model trained without mirroring "
                              "samples unmirrored.")
    mirrors.add_argument("--no_mirrored_members", dest="mirrored_members", action="store_const", const=False,
                         help="Every member sees the case as it is, whatever the denoiser trainer's default.")


def add_uncertainty_options(group) -> None:
    group.add_argument("--vanilla", action="store_true",
                       help="Baseline: start from pure noise at T and run the full reverse process (no pre-segmenter).")
    group.add_argument("-uncertainty", choices=UNCERTAINTY_KINDS, default=None,
                       help="variance across the ensemble (paper), predictive entropy, its aleatoric part "
                            "expected_entropy (mean entropy of the members), its epistemic part mutual_information "
                            "(entropy - expected_entropy: the members' disagreement), or none. Default: the denoiser "
                            "trainer's (PDDDPMTrainer: entropy; PDDDPMTrainer_paper: variance).")
    group.add_argument("--uncertainty_per_class", action="store_true",
                       help="Also write one map per foreground class (CASE_uncertainty_class1.nii.gz, ...): that "
                            "class's variance, or with entropy its binary entropy. CASE_uncertainty stays their mean.")
    start = group.add_mutually_exclusive_group()
    start.add_argument("--soft_pre_segmentation", dest="soft_pre_segmentation", action="store_const", const=True,
                       default=None, help="Encode the pre-segmenter's probabilities (2p-1) instead of its argmax. "
                                          "Default: the denoiser trainer's (PDDDPMTrainer: soft; "
                                          "PDDDPMTrainer_paper: argmax, as in the paper).")
    start.add_argument("--hard_pre_segmentation", dest="soft_pre_segmentation", action="store_const", const=False,
                       help="Encode the pre-segmenter's argmax (one-hot), whatever the denoiser trainer's default.")
    group.add_argument("--no_case_scores", action="store_true",
                       help="Do not write uncertainty/case_scores.json (pairwise Dice of the samples, mean uncertainty "
                            "per case), which keeps every sample's probabilities of a case in memory while it is "
                            "sampled.")


def add_performance_options(group) -> None:
    """Knobs that change speed and memory, never the samples."""
    group.add_argument("-max_batch_size", type=int, default=PerformanceSettings.max_batch_size,
                       help=f"Samples (patches x members) per network call. Default: "
                            f"{PerformanceSettings.max_batch_size}.")
    group.add_argument("-memory_budget_gb", type=float, default=None,
                       help="Cap the batch further from an estimate of activation memory per sample (GPU).")
    group.add_argument("--channels_last", action="store_true", help="Channels-last memory format for the denoiser.")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the fixed-shape denoiser call (CUDA graphs on a GPU; compiling takes "
                            "~30-60 s).")


# ---------------------------------------------------------------- checks and conversions
def check_model_options(args: argparse.Namespace) -> None:
    """Cheap checks of the shared options before any model loads (one sentence each)."""
    if not 0 < args.step_size <= 1:
        raise PDDDPMUserError(f"-step_size must be in (0, 1], got {args.step_size}.")
    check_at_least("-t_prime", args.t_prime, 0)
    check_at_least("-ensemble_size", args.ensemble_size, 1)
    check_at_least("-steps", args.steps, 1)
    check_at_least("-max_batch_size", args.max_batch_size, 1)
    performance_settings(args)
    SamplingSettings(vanilla=getattr(args, "vanilla", False), **fusion_overrides(args))
    folds(args.f)
    folds(args.preseg_f)
    require_nnunet_results()
    dataset_name(args.d)


def device(name: str):
    """``-device`` as a torch device, refused with one sentence when it is not there."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise PDDDPMUserError("-device cuda was requested but no CUDA GPU is available; pass -device cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise PDDDPMUserError("-device mps was requested but MPS is not available; pass -device cpu.")
    return torch.device(name)


def folds(values: Sequence[str] | None) -> tuple[int | str, ...] | None:
    """``-f``/``-preseg_f`` values as nnU-Net's folds (integers or ``all``); None for every trained fold."""
    if values is None:
        return None
    try:
        return tuple(v if v == "all" else int(v) for v in values)
    except ValueError:
        raise PDDDPMUserError(f"Folds must be integers or 'all', got {' '.join(values)}.") from None


def model_folders(args: argparse.Namespace) -> tuple[str, str]:
    """(denoiser folder, pre-segmenter folder) in ``nnUNet_results`` as nnU-Net names them."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    dataset = dataset_name(args.d)
    return (get_output_folder(dataset, args.tr, args.p, args.c),
            get_output_folder(dataset, args.preseg_tr, args.preseg_p, args.preseg_c or args.c))


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling options given on the command line, as ``SamplingSettings`` fields (unset ones left out)."""
    given = {"t_prime": args.t_prime, "ensemble_size": args.ensemble_size, "sampler": args.sampler,
             "steps": args.steps, "seed": args.seed, "ensemble_per_fold": args.ensemble_per_fold or None,
             "mirrored_members": args.mirrored_members}
    return {k: v for k, v in given.items() if v is not None} | fusion_overrides(args)


def fusion_overrides(args: argparse.Namespace) -> dict:
    """``-preseg_weight``, ``-confidence_gate`` and ``--lesion_gate`` as ``SamplingSettings`` fields (unset ones
    left out)."""
    given = {"pre_segmentation_weight": args.preseg_weight, "confidence_gate": args.confidence_gate,
             "lesion_gate": args.lesion_gate}
    return {k: v for k, v in given.items() if v is not None}


def performance_settings(args: argparse.Namespace) -> PerformanceSettings:
    return PerformanceSettings(max_batch_size=args.max_batch_size, memory_budget_gb=args.memory_budget_gb,
                               channels_last=args.channels_last, compile=args.compile)
