"""Layers and interfaces: inference loads no training code; every pre-segmentation source fits the protocol."""
import subprocess
import sys

CHECK = """
import sys
import nnunet_pdddpm.inference
import nnunet_pdddpm.inference.predictor
import nnunet_pdddpm.inference.pre_segmentation
import nnunet_pdddpm.experiments.runner
loaded = sorted(m for m in sys.modules if m.startswith("nnunet_pdddpm.trainers") or m == "nnunet_pdddpm.nnunet_ext")
print("trainer modules:", loaded)
print("excepthook untouched:", sys.excepthook is sys.__excepthook__)
"""


def test_importing_the_predictor_loads_no_trainer_module():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "trainer modules: []" in proc.stdout
    assert "excepthook untouched: True" in proc.stdout


def test_the_trainer_installs_its_excepthook_only_when_made():
    check = ("import sys\nimport nnunet_pdddpm.trainers\nprint(sys.excepthook is sys.__excepthook__)")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"  # importing the trainers (as nnU-Net's class lookup does) changes nothing


def test_every_pre_segmentation_source_has_the_protocols_methods():
    import inspect

    from nnunet_pdddpm.experiments.pre_segmentations import DegradedPreSegmentation
    from nnunet_pdddpm.inference.pre_segmentation import (
        CachedPreSegmentation,
        ModelPreSegmenter,
        NpzPreSegmentation,
        PreSegmentation,
    )

    wanted = {name: list(inspect.signature(getattr(PreSegmentation, name)).parameters)
              for name in ("check_case", "probabilities")}
    for cls in (ModelPreSegmenter, NpzPreSegmentation, CachedPreSegmentation, DegradedPreSegmentation):
        for name, parameters in wanted.items():
            assert list(inspect.signature(getattr(cls, name)).parameters) == parameters, (cls, name)


def test_a_folder_of_inputs_is_listed_without_a_process_pool(env, tmp_path, monkeypatch):
    """nnU-Net lists a folder with a fork Pool whose terminate() can hang; ours lists it in-process, in nnU-Net's
    order and with nnU-Net's output names."""
    import multiprocessing.pool

    import torch
    from conftest import model_folder

    from nnunet_pdddpm.inference.predictor import PDDDPMPredictor

    predictor = PDDDPMPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder(env, "PDDDPMTrainer_tiny")), [0])

    def no_pool(*args, **kwargs):
        raise AssertionError("a multiprocessing Pool was started to list the input folder")

    monkeypatch.setattr(multiprocessing.pool.Pool, "__init__", no_pool)
    images = env / "raw" / "Dataset991_Tiny" / "imagesTs"
    lists, outputs, _ = predictor._manage_input_and_output_lists(str(images), str(tmp_path), part_id=1, num_parts=2)
    assert [o.rsplit("/", 1)[-1] for o in outputs] == ["case_009"]
    assert lists == [[str(images / "case_009_0000.nii.gz")]]
