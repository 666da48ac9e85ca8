"""A trained denoiser, loaded once: what sampling needs from a ``PDDDPMTrainer`` model folder, frozen.

:func:`load_denoiser_model` reads the folder (checkpoints with ``weights_only=True``, EMA weights) and
:func:`denoiser_model` builds the same from networks in memory (the trainer's final validation). The
model's ``sampling`` are the checkpoint's defaults with the automatic T' already applied
(``fold_X/pdddpm_t_prime.json``, written by the final validation's sweep) and ``t_prime_source`` says where
T' came from; :meth:`SamplingSettings.resolve` checks any settings against :attr:`DenoiserModel.limits`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from os.path import isdir, isfile, join

from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_pdddpm.checkpoints import load_checkpoint_safe, state_dict_problem
from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.nnunet_model import checked_folds
from nnunet_pdddpm.inference.settings import DenoiserLimits, SamplingSettings
from nnunet_pdddpm.inference.t_prime_sweep import read_auto_t_prime
from nnunet_pdddpm.networks.from_plans import build_denoiser_from_kwargs

#: ``t_prime_source`` of a model whose T' is the trainer's ``t_prime`` (no sweep file)
TRAINER_T_PRIME = "the denoiser trainer's t_prime"


@dataclass(frozen=True, eq=False)
class DenoiserModel:
    """One denoiser per fold (eval mode) and everything the checkpoint says about how to sample them.

    trained_timesteps: the trainer's ``timestep_range`` (T when it trained on all timesteps): T' may not exceed it.
    sampling: the checkpoint's sampling settings, at the swept T' when the folder has one.
    t_prime_source: where ``sampling.t_prime`` came from, for messages (``-steps 40 exceeds T'=20 (...)``).
    """

    networks: tuple[nn.Module, ...]
    diffusion_config: DiffusionConfig
    trained_timesteps: int
    plans_manager: PlansManager
    configuration_manager: ConfigurationManager
    dataset_json: dict
    trainer_name: str
    allowed_mirroring_axes: tuple | None
    sampling: SamplingSettings
    t_prime_source: str = TRAINER_T_PRIME

    @property
    def label_manager(self):
        return self.plans_manager.get_label_manager(self.dataset_json)

    @property
    def limits(self) -> DenoiserLimits:
        """What this denoiser allows (T, trained timesteps, folds, classes): what settings are resolved against."""
        return DenoiserLimits(self.diffusion_config.num_train_timesteps, self.trained_timesteps, len(self.networks),
                              self.label_manager.num_segmentation_heads, self.trainer_name)


def denoiser_model(networks: list[nn.Module], plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                   dataset_json: dict, pdddpm_settings: dict, trainer_name: str,
                   allowed_mirroring_axes: tuple | None) -> DenoiserModel:
    """A model from denoisers in memory (one per fold) and a checkpoint's ``pdddpm`` settings; the networks are
    put in eval mode (not copied)."""
    diffusion_config = DiffusionConfig.from_dict(pdddpm_settings["diffusion"])
    trained = pdddpm_settings.get("training", {}).get("timestep_range") or diffusion_config.num_train_timesteps
    return DenoiserModel(tuple(net.eval() for net in networks), diffusion_config, int(trained), plans_manager,
                         configuration_manager, dataset_json, trainer_name, allowed_mirroring_axes,
                         SamplingSettings.from_stored(pdddpm_settings["sampling"]))


def load_denoiser_model(folder: str, folds: tuple | list | None = None,
                        checkpoint_name: str = "checkpoint_final.pth") -> DenoiserModel:
    """Load a ``PDDDPMTrainer`` model folder (CPU tensors; the predictor moves them); one sentence for a folder that
    is not one, a checkpoint another trainer wrote, labels that differ from the folder's or edited weights."""
    if not isdir(folder):
        raise PDDDPMUserError(f"Denoiser model folder {folder} does not exist; train it with nnUNetv2_train "
                              f"DATASET CONFIG FOLD -tr PDDDPMTrainer or check -d/-c/-tr/-p.")
    if not isfile(join(folder, "plans.json")) or not isfile(join(folder, "dataset.json")):
        raise PDDDPMUserError(f"{folder} is not an nnU-Net model folder (plans.json or dataset.json missing).")
    folds = checked_folds(folder, folds, checkpoint_name, "denoiser")
    plans_manager = PlansManager(load_json(join(folder, "plans.json")))
    dataset_json = load_json(join(folder, "dataset.json"))
    labels = plans_manager.get_label_manager(dataset_json).all_labels
    networks, first = [], None
    for f in folds:
        path = join(folder, f"fold_{f}", checkpoint_name)
        ckpt = _load_denoiser_checkpoint(path)
        _check_labels(path, ckpt["pdddpm"], labels)
        networks.append(_denoiser(ckpt, path))
        first = first or ckpt
    model = denoiser_model(networks, plans_manager,
                           plans_manager.get_configuration(first["init_args"]["configuration"]), dataset_json,
                           first["pdddpm"], first["trainer_name"], first.get("inference_allowed_mirroring_axes"))
    auto = read_auto_t_prime(folder, folds)
    if auto is None:
        return model
    t_prime, where = auto
    swept = replace(model, sampling=model.sampling.at_t_prime(t_prime),
                    t_prime_source=f"the validation sweep ({where})")
    swept.sampling.resolve(swept.limits, swept.t_prime_source)
    return swept


def _load_denoiser_checkpoint(path: str) -> dict:
    """Our checkpoints load with the safe unpickler; anything else is refused with a hint."""
    hint = (f"{path} was not written by PDDDPMTrainer; point -tr at the denoiser, and -preseg_tr at the "
            f"segmentation model.")
    try:
        ckpt = load_checkpoint_safe(path)
    except PDDDPMUserError as e:
        if "cannot be loaded safely" in str(e):
            raise PDDDPMUserError(hint + " (It cannot be loaded with torch.load(weights_only=True).)") from None
        raise
    if "pdddpm" not in ckpt:
        raise PDDDPMUserError(hint)
    return ckpt


def _check_labels(path: str, pdddpm_settings: dict, dataset_labels) -> None:
    """The mask channels the denoiser was trained on must be the model folder's labels, in the same order."""
    trained = pdddpm_settings.get("labels")
    expected = [int(v) for v in dataset_labels]
    if trained is not None and [int(v) for v in trained] != expected:
        raise PDDDPMUserError(f"{path} was trained on the labels {trained} but the model folder's dataset.json has "
                              f"{expected}; use the dataset.json the denoiser was trained with.")


def _denoiser(ckpt: dict, path: str) -> nn.Module:
    """The fold's network with its EMA weights."""
    try:
        net = build_denoiser_from_kwargs(ckpt["pdddpm"]["denoiser_kwargs"])
        net.load_state_dict(ckpt["ema"]["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # edited metadata, or weights of another net
        raise PDDDPMUserError(f"The weights in {path} do not fit the denoiser its metadata describes "
                              f"({state_dict_problem(e)}); the checkpoint is corrupt or was edited: restore "
                              f"it or retrain this fold.") from None
    return net
