"""Every public call PDDDPMPredictor inherits from nnUNetPredictor samples PD-DDPM or refuses in one sentence.

The calls are listed from nnU-Net itself, so a call a new nnU-Net version adds fails here until it is decided.
Sampling is seeded per case name (or seed 0 without one), so the same case predicted through two calls must give
the same arrays: the calls are checked against each other on the tiny trained models.
"""
import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATASET, model_folder
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

from nnunet_pdddpm.diffusion import DiffusionConfig
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.pre_segmentation import ModelPreSegmenter
from nnunet_pdddpm.inference.predictor import PDDDPMPredictor
from nnunet_pdddpm.inference.settings import SamplingSettings

CPU = torch.device("cpu")
PUBLIC = sorted(name for name, member in inspect.getmembers(nnUNetPredictor, callable) if not name.startswith("_"))
DECISIONS = {
    "auto_detect_available_folds": "pdddpm",
    "get_data_iterator_from_raw_npy_data": "pdddpm",
    "initialize_from_trained_model_folder": "pdddpm",
    "manual_initialization": "refused",
    "predict_from_data_iterator": "pdddpm",
    "predict_from_files": "pdddpm",
    "predict_from_files_sequential": "pdddpm",
    "predict_from_list_of_npy_arrays": "pdddpm",
    "predict_logits_from_preprocessed_data": "pdddpm",
    "predict_single_npy_array": "pdddpm",
    "predict_sliding_window_return_logits": "refused",
}
# nnU-Net's per-patch network calls, reachable by subclasses: the denoiser must not be run through them either
REFUSED_INTERNALS = ["_internal_maybe_mirror_and_predict", "_internal_predict_sliding_window_return_logits"]
CASES = ["case_008", "case_009"]


@pytest.fixture(scope="module")
def predictor(env) -> PDDDPMPredictor:
    p = PDDDPMPredictor(device=CPU, allow_tqdm=False,
                        sampling=SamplingSettings(t_prime=300, ensemble_size=3, sampler="ddpm", steps=10))
    p.initialize_from_trained_model_folder(str(model_folder(env, "PDDDPMTrainer_tiny")), [0])
    p.configure(pre_segmentation=ModelPreSegmenter(str(model_folder(env, "PDDDPMAttUNetTrainer_tiny")), [0],
                                                   "checkpoint_final.pth", CPU))
    return p


@pytest.fixture(scope="module")
def test_images(env) -> Path:
    return env / "raw" / DATASET / "imagesTs"


@pytest.fixture(scope="module")
def images(test_images) -> dict:
    """{case: (image (C, z, y, x), properties)} read as nnU-Net reads them."""
    return {c: SimpleITKIO().read_images([str(test_images / f"{c}_0000.nii.gz")]) for c in CASES}


@pytest.fixture(scope="module")
def files_run(predictor, test_images, tmp_path_factory) -> Path:
    """``predict_from_files`` on the test images: the reference the other file-writing calls must reproduce."""
    out = tmp_path_factory.mktemp("predict_from_files")
    predictor.predict_from_files(str(test_images), str(out), num_processes_preprocessing=1,
                                 num_processes_segmentation_export=1)
    return out


@pytest.fixture(scope="module")
def in_memory(predictor, images) -> dict:
    """{case: (segmentation, probabilities, uncertainty)} from ``predict_single_npy_array`` (seed of no case name)."""
    return {c: predictor.predict_single_npy_array(*images[c]) for c in CASES}


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def outputs(folder: Path, case: str) -> tuple[Path, Path]:
    return folder / f"{case}.nii.gz", folder / "uncertainty" / f"{case}_uncertainty.nii.gz"


def assert_same_files(folder: Path, reference: Path, cases=CASES) -> None:
    for case in cases:
        (seg, unc), (seg_ref, unc_ref) = outputs(folder, case), outputs(reference, case)
        assert np.array_equal(read(seg), read(seg_ref)), seg
        np.testing.assert_allclose(read(unc), read(unc_ref), atol=1e-5, err_msg=str(unc))


# ------------------------------------------------------------------ the calls that sample
def check_initialize_from_trained_model_folder(request):
    folder = model_folder(request.getfixturevalue("env"), "PDDDPMTrainer_tiny")
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    p = PDDDPMPredictor(device=CPU, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), [0])
    assert p.diffusion_config == DiffusionConfig.from_dict(ckpt["pdddpm"]["diffusion"])
    assert p.sampling.ensemble_size == ckpt["pdddpm"]["sampling"]["ensemble_size"]
    weights = p.networks[0].state_dict()
    assert all(torch.equal(weights[k], v) for k, v in ckpt["ema"]["weights"].items())  # the EMA weights
    # what was loaded is one frozen model: its settings cannot be changed behind the predictor's back
    assert p.model.networks == tuple(p.networks) and p.model.trained_timesteps == p.limits.trained_timesteps
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.model.sampling = SamplingSettings()


def check_auto_detect_available_folds(request):
    folder = str(model_folder(request.getfixturevalue("env"), "PDDDPMTrainer_tiny"))
    p = request.getfixturevalue("predictor")
    assert p.auto_detect_available_folds(folder, "checkpoint_final.pth") == [0]
    assert p.auto_detect_available_folds(folder, "checkpoint_missing.pth") == []


def check_get_data_iterator_from_raw_npy_data(request):
    env, p = request.getfixturevalue("env"), request.getfixturevalue("predictor")
    image, props = SimpleITKIO().read_images([str(env / "raw" / DATASET / "imagesTr" / "case_003_0000.nii.gz")])
    [item] = list(p.get_data_iterator_from_raw_npy_data(image, None, props, "case_003", 1))
    folder = env / "preprocessed" / DATASET / "nnUNetPlans_2d"
    data, _, _, _ = infer_dataset_class(str(folder))(str(folder), ["case_003"]).load_case("case_003")
    assert item["ofile"] == "case_003"
    np.testing.assert_allclose(np.asarray(item["data"]), np.asarray(data[:]), atol=1e-4)  # the model's preprocessing


def check_predict_from_files(request):
    out, test_images = request.getfixturevalue("files_run"), request.getfixturevalue("test_images")
    for case in CASES:
        source = sitk.ReadImage(str(test_images / f"{case}_0000.nii.gz"))
        seg_file, unc_file = outputs(out, case)
        for f in (seg_file, unc_file):
            written = sitk.ReadImage(str(f))
            assert written.GetSize() == source.GetSize() and np.allclose(written.GetSpacing(), source.GetSpacing())
            assert np.allclose(written.GetOrigin(), source.GetOrigin())
        assert set(np.unique(read(seg_file))) <= {0, 1}
        assert read(unc_file).dtype == np.float32
    assert any(read(outputs(out, c)[1]).max() > 0 for c in CASES)  # three samples disagree somewhere
    # without an output folder: nnU-Net's return, the segmentations in the input geometry
    p, memory = request.getfixturevalue("predictor"), request.getfixturevalue("in_memory")
    segs = p.predict_from_files(str(test_images), None, num_processes_preprocessing=1)
    assert len(segs) == len(CASES)
    for case, seg in zip(CASES, segs):
        assert np.array_equal(seg, memory[case][0])


def check_predict_from_files_sequential(request):
    p, test_images, tmp_path = (request.getfixturevalue(n) for n in ("predictor", "test_images", "tmp_path"))
    assert p.predict_from_files_sequential(str(test_images), str(tmp_path)) == []
    assert_same_files(tmp_path, request.getfixturevalue("files_run"))
    assert (tmp_path / "predict_from_raw_data_args.json").is_file() and (tmp_path / "plans.json").is_file()
    memory = request.getfixturevalue("in_memory")
    returned = p.predict_from_files_sequential(str(test_images), None, save_probabilities=True)
    for case, (seg, probs) in zip(CASES, returned):
        assert np.array_equal(seg, memory[case][0])
        np.testing.assert_allclose(probs, memory[case][1], atol=1e-6)


def check_predict_from_list_of_npy_arrays(request):
    p, images, tmp_path = (request.getfixturevalue(n) for n in ("predictor", "images", "tmp_path"))
    arrays, properties = [images[c][0] for c in CASES], [images[c][1] for c in CASES]
    memory = request.getfixturevalue("in_memory")
    returned = p.predict_from_list_of_npy_arrays(arrays, None, properties, None, 1, save_probabilities=True)
    for case, image, (seg, probs) in zip(CASES, arrays, returned):
        assert seg.shape == image.shape[1:] and probs.shape == (2, *image.shape[1:])
        assert np.array_equal(seg, memory[case][0])
        np.testing.assert_allclose(probs, memory[case][1], atol=1e-6)
    segs = p.predict_from_list_of_npy_arrays(arrays, None, properties, None, 1)
    assert all(np.array_equal(s, memory[c][0]) for c, s in zip(CASES, segs))
    p.predict_from_list_of_npy_arrays(arrays, None, properties, [str(tmp_path / c) for c in CASES], 1,
                                      num_processes_segmentation_export=1)
    assert_same_files(tmp_path, request.getfixturevalue("files_run"))


def check_predict_from_data_iterator(request):
    p, images, tmp_path = (request.getfixturevalue(n) for n in ("predictor", "images", "tmp_path"))
    image, props = images["case_008"]
    items = [{"data": item["data"], "data_properties": item["data_properties"], "ofile": str(tmp_path / "case_008")}
             for item in p.get_data_iterator_from_raw_npy_data(image, None, props, None, 1)]
    p.predict_from_data_iterator(items, save_probabilities=True, num_processes_segmentation_export=1)
    assert_same_files(tmp_path, request.getfixturevalue("files_run"), ["case_008"])
    with np.load(tmp_path / "case_008.npz") as npz:
        assert npz["probabilities"].shape[0] == 2


def check_predict_single_npy_array(request):
    p, images, tmp_path = (request.getfixturevalue(n) for n in ("predictor", "images", "tmp_path"))
    image, _ = images["case_008"]
    seg, probs, unc = request.getfixturevalue("in_memory")["case_008"]
    assert seg.shape == unc.shape == image.shape[1:] and np.array_equal(seg, probs.argmax(0))
    assert p.predict_single_npy_array(*images["case_008"], None, str(tmp_path / "case_008")) is None
    assert_same_files(tmp_path, request.getfixturevalue("files_run"), ["case_008"])


def check_predict_logits_from_preprocessed_data(request):
    p, images = request.getfixturevalue("predictor"), request.getfixturevalue("images")
    image, props = images["case_008"]
    [item] = list(p.get_data_iterator_from_raw_npy_data(image, None, props, None, 1))
    logits = p.predict_logits_from_preprocessed_data(item["data"])
    assert logits.shape == (2, *item["data"].shape[1:])
    probabilities = p.predict_case(item["data"], item["data_properties"], None).probabilities
    torch.testing.assert_close(torch.softmax(logits, 0), probabilities, atol=1e-6, rtol=0)


SAMPLED = {name[len("check_"):]: check for name, check in globals().items() if name.startswith("check_")}


# ------------------------------------------------------------------ the calls that refuse
def nnunet_arguments(p: PDDDPMPredictor, name: str, data: torch.Tensor) -> tuple:
    """Arguments nnU-Net's own code passes to each refused call."""
    if name == "manual_initialization":
        return p.network, p.plans_manager, p.configuration_manager, None, p.dataset_json, p.trainer_name, None
    if name == "_internal_predict_sliding_window_return_logits":
        slicers = p._internal_get_sliding_window_slicers(data.shape[1:])
        return data, slicers, False
    if name == "_internal_maybe_mirror_and_predict":
        return (data[None, :, 0],)
    return (data,)


def assert_refused(p: PDDDPMPredictor, name: str, data: torch.Tensor) -> None:
    calls = []
    hook = p.networks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    network, sampling = p.network, p.sampling
    try:
        with pytest.raises(PDDDPMUserError) as refused:
            getattr(p, name)(*nnunet_arguments(p, name, data))
    finally:
        hook.remove()
    message = str(refused.value)
    assert message.startswith(f"PDDDPMPredictor.{name} would ") and " instead" in message
    assert message.endswith(".") and ". " not in message  # one sentence
    assert not calls and p.network is network and p.sampling is sampling


@pytest.fixture(scope="module")
def preprocessed(predictor, images) -> torch.Tensor:
    image, props = images["case_009"]
    [item] = list(predictor.get_data_iterator_from_raw_npy_data(image, None, props, None, 1))
    return item["data"]


# ------------------------------------------------------------------ tests
def test_every_public_nnunet_call_is_decided():
    assert set(DECISIONS) == set(PUBLIC), "decide each of nnU-Net's public calls: sample PD-DDPM or refuse"
    assert {name for name, d in DECISIONS.items() if d == "pdddpm"} == set(SAMPLED)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_nnunet_call(name, request):
    assert name in DECISIONS, f"nnUNetPredictor.{name} is new: make PDDDPMPredictor sample PD-DDPM in it or refuse it"
    if DECISIONS[name] == "refused":
        assert_refused(request.getfixturevalue("predictor"), name, request.getfixturevalue("preprocessed"))
    else:
        SAMPLED[name](request)


@pytest.mark.parametrize("name", REFUSED_INTERNALS)
def test_per_patch_network_calls_are_refused(name, predictor, preprocessed):
    assert_refused(predictor, name, preprocessed)


@pytest.mark.parametrize("keyword", ["num_processes_preprocessing", "num_processes_segmentation_export"])
def test_zero_workers_are_refused_before_any_case_is_read(predictor, test_images, tmp_path, keyword):
    """nnU-Net's preprocessing iterator asserted on 0 processes after the models had loaded; the export threads were
    raised to 1 without a word."""
    with pytest.raises(PDDDPMUserError, match=rf"^{keyword} \(-np[ps]\) must be at least 1, got 0\.$"):
        predictor.predict_from_files(str(test_images), str(tmp_path / "out"), **{keyword: 0})
    assert not (tmp_path / "out").exists()
