"""Final validation of ``PDDDPMTrainer`` (``perform_actual_validation``): real PD-DDPM segmentations.

The pre-segmenter is looked up in ``nnUNet_results/<dataset>/<T>__<plans>__<configuration>/fold_<fold>/
checkpoint_final.pth`` for each trainer name ``T`` in ``trainer.pre_segmenter_trainers`` (first
found wins): the same fold, so validation cases were not seen by it either. Without one, the
documented fallback is the vanilla reverse process from pure noise at T with the trainer's sampler
and steps (skipped, with a message, for a denoiser trained on part of the timesteps). Segmentations go to
``fold_X/validation/``, uncertainty maps to ``fold_X/validation/uncertainty/``, and nnU-Net's
``summary.json`` is computed as nnU-Net does.

With a pre-segmenter and ``trainer.t_prime_sweep`` candidates, T' is chosen first: PD-DDPM with a fast
sampler for each candidate on the same validation cases (``inference/t_prime_sweep.py``); the best goes to
``fold_X/pdddpm_t_prime.json``, which ``nnunet_pdddpm_predict`` uses when ``-t_prime`` is not given, and
the validation itself then runs at that T'.

The pre-segmenter's checkpoint is read without running code (``nnunet_pdddpm/checkpoints.py``); only with
``nnunet_pdddpm_trust_checkpoints=1`` in the environment of ``nnUNetv2_train`` is it unpickled in full.
"""
from __future__ import annotations

import os
from dataclasses import replace
from os.path import isfile, join

import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder

from nnunet_pdddpm.checkpoints import trust_checkpoints_from_env
from nnunet_pdddpm.inference.export import export_case
from nnunet_pdddpm.inference.pre_segmentation import ModelPreSegmenter
from nnunet_pdddpm.inference.predictor import PDDDPMPredictor
from nnunet_pdddpm.inference.settings import SamplingSettings
from nnunet_pdddpm.inference.t_prime_sweep import T_PRIME_FILE, sweep_t_prime, write_sweep
from nnunet_pdddpm.io_utils import write_json_atomic
from nnunet_pdddpm.output_names import UNCERTAINTY_FOLDER, UNCERTAINTY_SUFFIX


def find_pre_segmenter_folder(trainer) -> str | None:
    """The first ``pre_segmenter_trainers`` model folder with a final checkpoint for the trainer's fold."""
    base = os.path.dirname(trainer.output_folder_base)
    for name in trainer.pre_segmenter_trainers:
        folder = join(base, f"{name}__{trainer.plans_manager.plans_name}__{trainer.configuration_name}")
        if isfile(join(folder, f"fold_{trainer.fold}", "checkpoint_final.pth")):
            return folder
    return None


def sweep_settings(settings: SamplingSettings) -> SamplingSettings:
    """The fast sampler of the T' sweep: the trainer's sampler if it is already fast, else DDIM with 10 steps."""
    if settings.sampler == "ddpm":
        return replace(settings, sampler="ddim", steps=10)
    return replace(settings, steps=settings.steps or 10)


def run_t_prime_sweep(trainer, predictor, dataset_val, settings: SamplingSettings, pre_segmentation) -> int:
    candidates = [t for t in trainer.t_prime_sweep if 0 < t <= trainer.max_training_timestep]
    fast = sweep_settings(settings)
    trainer.print_to_log_file(f"T' sweep over {candidates} on {len(dataset_val.identifiers)} validation cases "
                              f"({fast.sampler} {fast.steps} steps, ensemble {fast.ensemble_size})")

    def cases():
        for key in dataset_val.identifiers:
            data, seg, _, properties = dataset_val.load_case(key)
            yield key, torch.from_numpy(data[:]), properties, trainer._label_indices(torch.from_numpy(seg[:]))[0]

    sweep = sweep_t_prime(predictor, cases(), candidates, fast, pre_segmentation)
    write_sweep(sweep, trainer.output_folder)
    curve = ", ".join(f"{t}: {d:.4f}" for t, d in zip(sweep["candidates"], sweep["dice"]))
    trainer.print_to_log_file(f"T' sweep Dice {{{curve}}}; best T'={sweep['t_prime']} (written to "
                              f"{T_PRIME_FILE}; nnunet_pdddpm_predict uses it unless -t_prime is given)",
                              also_print_to_console=True)
    return sweep["t_prime"]


def run_final_validation(trainer, save_probabilities: bool = False) -> None:
    pre_folder = find_pre_segmenter_folder(trainer)
    settings = trainer.sampling.with_overrides(
        vanilla=pre_folder is None, case_scores=False,
        soft_pre_segmentation=trainer.soft_pre_segmentation and pre_folder is not None)
    if settings.vanilla and trainer.max_training_timestep < trainer.diffusion_config.num_train_timesteps:
        trainer.print_to_log_file(
            f"Final validation skipped: no pre-segmenter ({', '.join(trainer.pre_segmenter_trainers)}) was found for "
            f"fold {trainer.fold}, and the fallback (vanilla sampling from T) needs a denoiser trained on all "
            f"timesteps (this one: t < {trainer.max_training_timestep}). Train the pre-segmenter, then run this "
            f"training again with --val.", also_print_to_console=True)
        return
    predictor = PDDDPMPredictor(device=trainer.device, allow_tqdm=False, sampling=settings)
    predictor.manual_initialization_pdddpm([trainer.ema.shadow], trainer.plans_manager,
                                           trainer.configuration_manager, trainer.dataset_json,
                                           trainer.pdddpm_settings(), trainer.__class__.__name__,
                                           trainer.inference_allowed_mirroring_axes)
    _, val_keys = trainer.do_split()
    if trainer.is_ddp:
        val_keys = val_keys[trainer.local_rank::dist.get_world_size()]
    dataset_val = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys)
    pre_segmentation = None
    if pre_folder is not None:
        pre_segmentation = ModelPreSegmenter(pre_folder, [trainer.fold], "checkpoint_final.pth", trainer.device,
                                             trust_checkpoints=trust_checkpoints_from_env())
        predictor.check_pre_segmentation(pre_segmentation)
        if trainer.t_prime_sweep and not trainer.is_ddp:
            t_prime = run_t_prime_sweep(trainer, predictor, dataset_val, settings, pre_segmentation)
            settings = settings.at_t_prime(t_prime)
        how = f"PD-DDPM from pre-segmenter {pre_folder} (T'={settings.t_prime})"
    else:
        how = "vanilla DDPM from noise at T (no pre-segmenter found: fallback)"
    trainer.print_to_log_file(f"Final validation: {how}, ensemble {settings.ensemble_size}, sampler "
                              f"{settings.sampler}, steps {settings.steps or 'all'}")

    out = join(trainer.output_folder, "validation")
    maybe_mkdir_p(join(out, UNCERTAINTY_FOLDER))
    ending = trainer.dataset_json["file_ending"]
    for key in dataset_val.identifiers:
        trainer.print_to_log_file(f"predicting {key}")
        data, _, _, properties = dataset_val.load_case(key)
        result = predictor.predict_case(torch.from_numpy(data[:]), properties, key, settings, pre_segmentation)
        export_case(result.probabilities, result.uncertainty, properties, trainer.plans_manager,
                    trainer.configuration_manager, trainer.dataset_json, join(out, key), save_probabilities,
                    join(out, UNCERTAINTY_FOLDER, key + UNCERTAINTY_SUFFIX + ending))
    if trainer.is_ddp:
        dist.barrier()
    if trainer.local_rank == 0:
        metrics = compute_metrics_on_folder(
            join(trainer.preprocessed_dataset_folder_base, "gt_segmentations"), out, join(out, "summary.json"),
            trainer.plans_manager.image_reader_writer_class(), ending, trainer.label_manager.foreground_labels,
            None, chill=True, num_processes=default_num_processes)
        write_json_atomic({"method": how, "sampling": settings.to_dict()}, join(out, "pdddpm_validation.json"))
        trainer.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
        trainer.print_to_log_file("Validation complete", also_print_to_console=True)
        trainer.print_to_log_file("Mean Validation Dice: ", metrics["foreground_mean"]["Dice"],
                                  also_print_to_console=True)
