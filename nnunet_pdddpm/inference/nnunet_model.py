"""Any trained nnU-Net model folder into an ``nnUNetPredictor``, without running code from its checkpoints.

``nnUNetPredictor.initialize_from_trained_model_folder`` (nnU-Net 2.8.1) reads checkpoints with
``torch.load(weights_only=False)``, so a crafted checkpoint runs whatever it names. This is the same
procedure with :func:`nnunet_pdddpm.checkpoints.load_nnunet_checkpoint` in place of that call; the network is
built and the predictor set up exactly as there (``manual_initialization``), so predictions are unchanged.
"""
from __future__ import annotations

import inspect
import warnings
from os.path import isfile, join

from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_pdddpm.checkpoints import load_nnunet_checkpoint, state_dict_problem
from nnunet_pdddpm.errors import PDDDPMUserError

_KEYS = ("network_weights", "trainer_name", "init_args")


def initialize_from_model_folder(predictor: nnUNetPredictor, model_folder: str, folds: list,
                                 checkpoint_name: str, trust_checkpoints: bool = False) -> None:
    """Load ``fold_F/checkpoint_name`` of each fold of ``model_folder`` into ``predictor`` (one parameter set per
    fold, the network built by the checkpoint's trainer class, found by name as nnU-Net finds it)."""
    parameters = []
    for i, fold in enumerate(folds):
        path = join(model_folder, f"fold_{fold}", checkpoint_name)
        checkpoint = load_nnunet_checkpoint(path, trust_checkpoints=trust_checkpoints)
        if "pdddpm" in checkpoint:
            raise PDDDPMUserError(f"{path} is a PD-DDPM denoiser, not a segmentation model; point -preseg_tr at the "
                                  f"pre-segmenter (for example PDDDPMAttUNetTrainer or nnUNetTrainer) and -tr at "
                                  f"the denoiser.")
        missing = [k for k in _KEYS if k not in checkpoint]
        if missing:
            raise PDDDPMUserError(f"{path} is not an nnU-Net checkpoint (no {', '.join(missing)}); point -preseg_* at "
                                  f"a model folder written by nnUNetv2_train.")
        if i == 0:
            trainer_name = checkpoint["trainer_name"]
            configuration_name = checkpoint["init_args"]["configuration"]
            mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes")
        parameters.append(checkpoint["network_weights"])

    dataset_json = load_json(join(model_folder, "dataset.json"))
    plans_manager = PlansManager(load_json(join(model_folder, "plans.json")))
    configuration_manager = plans_manager.get_configuration(configuration_name)
    num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_output_channels = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        network = trainer_class.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision=False)
    else:  # trainers written for nnU-Net < 2.6 (nnU-Net itself still accepts them, with this warning)
        warnings.warn(f"Trainer {trainer_name} uses the old build_network_architecture signature.",
                      DeprecationWarning, stacklevel=2)
        network = trainer_class.build_network_architecture(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
            enable_deep_supervision=False)
    for fold, weights in reversed(list(zip(folds, parameters))):  # every fold now, not mid-prediction
        try:
            network.load_state_dict(weights)  # ends with the first fold's, as nnU-Net until prediction swaps them
        except RuntimeError as e:
            detail = state_dict_problem(e)
            raise PDDDPMUserError(f"The weights in {join(model_folder, f'fold_{fold}', checkpoint_name)} do not fit "
                                  f"the network of {trainer_name} for this plans.json ({detail}); the checkpoint is "
                                  f"corrupt or belongs to another model folder: restore it or retrain this "
                                  f"fold.") from None
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer_name, mirroring_axes)


def checked_folds(model_folder: str, folds, checkpoint_name: str, what: str) -> list:
    """The folds to load (all trained ones when ``folds`` is None); one sentence naming ``what`` if a checkpoint is
    missing."""
    if folds is None:
        folds = nnUNetPredictor.auto_detect_available_folds(model_folder, checkpoint_name)
    folds = [f if f == "all" else int(f) for f in folds]
    if not folds:
        raise PDDDPMUserError(f"No trained fold with {checkpoint_name} in the {what} folder {model_folder}.")
    for f in folds:
        ckpt = join(model_folder, f"fold_{f}", checkpoint_name)
        if not isfile(ckpt):
            raise PDDDPMUserError(f"The {what} checkpoint {ckpt} does not exist; finish training fold {f} or pass "
                                  f"another fold/checkpoint.")
    return folds
