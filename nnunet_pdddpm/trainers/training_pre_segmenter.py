"""The trained pre-segmenter inside denoiser training (``pre_segmentation_source``).

At inference PD-DDPM diffuses the pre-segmenter's mask, errors included, while a denoiser trained on the
diffused ground truth has only seen masks without them; such a denoiser can do little but copy its start.
Fu et al. (MELBA 2023) close this gap by training on masks the model itself predicts. Here the gap is
closed with the pre-segmenter PD-DDPM will actually start from, segmenting each augmented training patch
on the fly; the denoiser learns to turn that mask, diffused, into the ground truth.

- ``"pre_segmenter"``: the frozen network of the same fold (found as the final validation finds it). It was
  trained on these very cases, so its masks are better than the ones it gives unseen cases.
- ``"out_of_fold"``: each training case is segmented by the pre-segmenter fold that held it out (nnU-Net's
  five-fold cross-validation: every case is a validation case of exactly one fold), so the errors are those
  of unseen cases. Needs the pre-segmenter's other folds trained, as nnU-Net's own ensembling does.

Its checkpoints are read as the final validation reads them: without running code, unless
``nnunet_pdddpm_trust_checkpoints=1``.
"""
from __future__ import annotations

import copy
from os.path import isfile, join

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from torch import nn

from nnunet_pdddpm.checkpoints import trust_checkpoints_from_env
from nnunet_pdddpm.errors import PDDDPMUserError


def load_training_pre_segmenter(trainer) -> nn.Module:
    """``module(data, keys) -> logits``: the frozen pre-segmenter(s) (eval mode, on the trainer's device)."""
    from nnunet_pdddpm.trainers.validation import find_pre_segmenter_folder

    folder = find_pre_segmenter_folder(trainer)
    if trainer.pre_segmentation_source == "out_of_fold":
        return _load_out_of_fold(trainer, folder)
    if folder is None:
        raise PDDDPMUserError(
            f"{type(trainer).__name__} trains on its pre-segmenter's predictions, but none of "
            f"{', '.join(trainer.pre_segmenter_trainers)} has a checkpoint_final.pth for fold {trainer.fold} of "
            f"{trainer.plans_manager.dataset_name} ({trainer.configuration_name}); train the pre-segmenter first "
            f"(nnUNetv2_train {trainer.plans_manager.dataset_name} {trainer.configuration_name} {trainer.fold} "
            f"-tr {trainer.pre_segmenter_trainers[0]}).")
    network = _fold_networks(trainer, folder, [trainer.fold])[trainer.fold]
    trainer.print_to_log_file(f"Training on the predictions of the pre-segmenter {folder} (fold {trainer.fold}) for "
                              f"{trainer.pre_segmentation_errors:.0%} of the samples")
    return _PerCaseNetworks({}, network)


def _fold_networks(trainer, folder: str, folds: list[int]) -> dict[int, nn.Module]:
    """The pre-segmenter's network of each fold (frozen, eval mode, full-resolution output only)."""
    from nnunet_pdddpm.inference.pre_segmentation import ModelPreSegmenter

    source = ModelPreSegmenter(folder, folds, "checkpoint_final.pth", trainer.device,
                               trust_checkpoints=trust_checkpoints_from_env())
    if source.predictor.label_manager.num_segmentation_heads != trainer.label_manager.num_segmentation_heads:
        raise PDDDPMUserError(f"The pre-segmenter in {folder} predicts "
                              f"{source.predictor.label_manager.num_segmentation_heads} classes but the dataset has "
                              f"{trainer.label_manager.num_segmentation_heads}; retrain it on this dataset.")
    mirror_axes = tuple(source.predictor.allowed_mirroring_axes or ()) if trainer.pre_segmentation_mirroring else ()
    if trainer.pre_segmentation_mirroring:
        trainer.print_to_log_file(f"Pre-segmenter logits averaged over its test-time mirror axes {mirror_axes}"
                                  if mirror_axes else "The pre-segmenter has no test-time mirror axes: its training "
                                  "starts are one pass, as its predictions at inference are")
    networks = {}
    for fold, parameters in zip(folds, source.predictor.list_of_parameters):
        network = copy.deepcopy(source.predictor.network)
        network.load_state_dict(parameters)
        networks[fold] = _FirstOutput(network.to(trainer.device).eval().requires_grad_(False), mirror_axes)
    return networks


def _load_out_of_fold(trainer, folder: str | None) -> nn.Module:
    splits_file = join(trainer.preprocessed_dataset_folder_base, "splits_final.json")
    splits = load_json(splits_file) if isfile(splits_file) else []
    tr_keys, _ = trainer.do_split()
    holder = {key: fold for fold, split in enumerate(splits) if fold != trainer.fold for key in split["val"]}
    # the trainer's own fold segments its validation cases (the per-epoch pseudo Dice), as at inference
    needed = sorted({holder[k] for k in tr_keys if k in holder} | {trainer.fold})
    base = folder or "the pre-segmenter's model folder"
    missing = [f for f in needed if folder is None or not isfile(join(folder, f"fold_{f}", "checkpoint_final.pth"))]
    if len(holder) == 0 or any(k not in holder for k in tr_keys) or missing:
        raise PDDDPMUserError(
            f"{type(trainer).__name__} trains on out-of-fold pre-segmentations, which needs every other fold of the "
            f"pre-segmenter ({', '.join(trainer.pre_segmenter_trainers)}) trained on nnU-Net's splits_final.json; "
            f"missing in {base}: folds {', '.join(map(str, missing or needed))}. Train them first (nnUNetv2_train "
            f"{trainer.plans_manager.dataset_name} {trainer.configuration_name} FOLD -tr "
            f"{trainer.pre_segmenter_trainers[0]}).")
    networks = _fold_networks(trainer, folder, needed)
    trainer.print_to_log_file(f"Training on out-of-fold predictions of the pre-segmenter {folder} (folds "
                              f"{needed}) for {trainer.pre_segmentation_errors:.0%} of the samples")
    return _PerCaseNetworks({k: networks[holder[k]] for k in tr_keys}, networks[trainer.fold])


class _FirstOutput(nn.Module):
    """The full-resolution logits of a network that may return deep-supervision lists; with ``mirror_axes`` (patch
    axes, 0-based as nnU-Net's ``allowed_mirroring_axes``) their mean over every mirror combination, as nnU-Net's
    test-time augmentation computes them."""

    def __init__(self, network: nn.Module, mirror_axes: tuple[int, ...] = ()) -> None:
        from nnunet_pdddpm.inference.ensemble_sampling import mirror_combinations

        super().__init__()
        self.network = network
        # the flipped dims of every combination after the unmirrored one, as (B, C, *patch) dims
        self.flips = [[a + 2 for a in c] for c in mirror_combinations(mirror_axes)[1:]]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self._logits(x)
        if not self.flips:
            return logits
        for dims in self.flips:  # summed in nnU-Net's order, so the mean is its _internal_maybe_mirror_and_predict's
            logits = logits + self._logits(x.flip(dims)).flip(dims)
        return logits / (len(self.flips) + 1)


class _PerCaseNetworks(nn.Module):
    """Logits of each sample from the network assigned to its case (``default`` for cases not listed)."""

    def __init__(self, by_case: dict[str, nn.Module], default: nn.Module | None) -> None:
        super().__init__()
        self.by_case = by_case
        self.default = default
        self.networks = nn.ModuleList({id(n): n for n in [*by_case.values(), default] if n is not None}.values())

    def forward(self, data: torch.Tensor, keys: list[str] | None) -> torch.Tensor:
        if self.default is not None and not self.by_case:
            return self.default(data)
        if keys is None or len(keys) != data.shape[0]:  # nnU-Net's loaders always give the keys
            raise ValueError("out-of-fold pre-segmentation needs the case key of every sample")
        out = None
        for network in self.networks:
            rows = [i for i, k in enumerate(keys) if self.by_case.get(k, self.default) is network]
            if rows:
                logits = network(data[rows])
                out = logits.new_empty((data.shape[0], *logits.shape[1:])) if out is None else out
                out[rows] = logits
        return out
