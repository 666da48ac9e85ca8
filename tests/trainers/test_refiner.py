"""The refiner recipe through the real nnU-Net: warm start, out-of-fold soft starts, and settings checked early.

The end-to-end part runs ``benchmarks/benchmark_refiner.py --quick`` once (tiny dataset: plain nnU-Net on the two
folds of its splits_final.json, the refiner, the same nnU-Net trained the refiner's budget more, a second seed's
nnU-Net) and checks what it trained and measured; the trainer-level checks then reuse its models.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from conftest import DATASET, DATASET_ID, nnunet_env

from nnunet_pdddpm.checkpoints import load_checkpoint_safe
from nnunet_pdddpm.diffusion import DiffusionConfig, model_output
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.settings import SamplingSettings

QUICK_DATASET = "Dataset984_PDDDPMFidelityTiny"


def _tiny():
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    return PDDDPMTrainer_tiny


# ---------------------------------------------------------------- settings checked before any training
def test_renamed_attribute_is_applied_with_a_warning() -> None:
    with pytest.warns(FutureWarning, match=r"Old\.sampling_steps is deprecated .*; set steps instead"):
        old = type("Old", (_tiny(),), {"sampling_steps": 3})
    assert old.steps == 3


def test_old_and_new_name_together_are_refused() -> None:
    with pytest.raises(PDDDPMUserError, match=r"Both sets both sampling_steps and steps"):
        type("Both", (_tiny(),), {"sampling_steps": 3, "steps": 4})


def test_every_renamed_attribute_is_handled() -> None:
    from nnunet_pdddpm.trainers.pdddpm_trainer import RENAMED_ATTRIBUTES

    for old, new in RENAMED_ATTRIBUTES.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls = type("Renamed", (_tiny(),), {old: 7})
        assert getattr(cls, new) == 7 and any(old in str(w.message) for w in caught)


def test_sampling_is_one_value_read_from_the_fields_and_set_whole() -> None:
    """``sampling`` (a SamplingSettings) and its fields are one setting: a class body sets either, a mixin fields."""
    import dataclasses

    from nnunet_pdddpm import PDDDPMTrainer

    assert PDDDPMTrainer.sampling == SamplingSettings(t_prime=100, ensemble_size=5, sampler="ddim", steps=5,
                                                      soft_pre_segmentation=True, uncertainty="entropy",
                                                      pre_segmentation_weight=0.25, lesion_gate=True,
                                                      mirrored_members=True)
    whole = type("Whole", (PDDDPMTrainer,), {"sampling": dataclasses.replace(PDDDPMTrainer.sampling, t_prime=40,
                                                                                 steps=None, sampler="ddpm")})
    assert (whole.t_prime, whole.steps, whole.sampler, whole.ensemble_size) == (40, None, "ddpm", 5)
    assert whole.sampling == dataclasses.replace(PDDDPMTrainer.sampling, t_prime=40, steps=None, sampler="ddpm")
    one_field = type("OneField", (whole,), {"ensemble_size": 3})  # a field of a class that set sampling whole
    assert one_field.sampling == dataclasses.replace(whole.sampling, ensemble_size=3)


@pytest.mark.parametrize("body, message", [
    ({"sampling": SamplingSettings(t_prime=40), "t_prime": 50}, r"^Both sets both sampling and t_prime, which is a "
                                                                r"field of sampling: set it inside sampling"),
    ({"sampling": SamplingSettings(confidence_gate=0.9)}, r"^Both\.sampling sets confidence_gate, which a checkpoint "
                                                          r"does not keep"),
    ({"sampling": {"t_prime": 40}}, r"^Both\.sampling must be a SamplingSettings, got dict\.$"),
])
def test_a_sampling_value_that_would_be_partly_ignored_is_refused(body, message) -> None:
    with pytest.raises(PDDDPMUserError, match=message):
        type("Both", (_tiny(),), body)


def test_a_mixin_may_not_set_sampling_whole() -> None:
    """A ``sampling`` value in a mixin would hide every field of the classes after it in the MRO."""
    mixin = type("Recipe", (), {"sampling": SamplingSettings(t_prime=40)})
    with pytest.raises(PDDDPMUserError, match=r"^Recipe \(a base of Mixed\) sets sampling but is not a PD-DDPM"):
        type("Mixed", (mixin, _tiny()), {})


def _construct(root: Path, cls, monkeypatch):
    for k, v in nnunet_env(root).items():
        if k.startswith("nnUNet"):
            monkeypatch.setenv(k, v)
    pre = root / "preprocessed" / DATASET
    plans = load_json(pre / "nnUNetPlans.json")
    plans["continue_training"] = False  # nnU-Net's run_training sets this key; the constructor pops it
    return cls(plans, "2d", 0, load_json(pre / "dataset.json"), torch.device("cpu"))


@pytest.mark.parametrize("attribute, value, message", [
    ("t_prime", -1, r"Bad\.t_prime must be an integer in \[0, 1000\], got -1"),
    ("ensemble_size", 0, r"Bad\.ensemble_size must be an integer of at least 1, got 0"),
    ("sampler", "euler", r"Bad\.sampler must be one of ddpm, ddim, dpm\+\+, got 'euler'"),
    ("steps", 0, r"Bad\.steps must be None \(every step\) or an integer of at least 1, got 0"),
    ("steps", 21, r"Bad\.steps must be at most t_prime \(20\): a reverse process from T' has only T' steps, got 21"),
    ("t_prime_sweep", (0, 10), r"Bad\.t_prime_sweep must hold integers in \(0, 1000\]"),
    ("uncertainty", "std", r"Bad\.uncertainty must be one of variance, entropy, .*got 'std'"),
    ("pre_segmentation_weight", 1.5, r"Bad\.pre_segmentation_weight must be a number in \[0, 1\], got 1\.5"),
    ("lesion_gate", "yes", r"Bad\.lesion_gate must be True or False, got 'yes'"),
    ("mirrored_members", 1, r"Bad\.mirrored_members must be True or False, got 1"),
    ("pre_segmentation_mirroring", 1, r"Bad\.pre_segmentation_mirroring must be True or False, got 1"),
    ("pre_segmentation_mirroring", True, r"Bad\.pre_segmentation_mirroring needs a trained pre-segmenter as "
                                         r"pre_segmentation_source \('pre_segmenter' or 'out_of_fold'\)"),
    ("warm_start", "pre_segmenter", r"Bad\.warm_start needs diffusion_config = DiffusionConfig"),
])
def test_invalid_attribute_is_refused_at_construction(nnunet_root, monkeypatch, attribute, value, message) -> None:
    bad = type("Bad", (_tiny(),), {attribute: value})
    with pytest.raises(PDDDPMUserError, match=message):
        _construct(nnunet_root, bad, monkeypatch)


def test_pretrained_weights_flag_is_refused_before_anything_is_unpickled(nnunet_root, tmp_path) -> None:
    trap = tmp_path / "weights.pth"
    trap.write_bytes(b"not read")
    exe = Path(sys.executable).parent / "nnUNetv2_train"
    proc = subprocess.run([str(exe), str(DATASET_ID), "2d", "0", "-tr", "PDDDPMTrainer_tiny_refiner", "-device", "cpu",
                           "-pretrained_weights", str(trap)], env=nnunet_env(nnunet_root), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "set the class attribute warm_start" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- end to end (the benchmark's quick mode)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick(refiner_quick) -> Path:
    return refiner_quick


def _folder(work: Path, trainer: str, seed: int = 0) -> Path:
    return work / f"results_seed{seed}" / QUICK_DATASET / f"{trainer}__nnUNetPlans__2d"


def _dice_and_auroc(work: Path, folder: Path) -> list[tuple[float, float]]:
    """(Dice of label 1, error-AUROC of the uncertainty map) per case of a predictions folder, in NumPy: the AUROC
    counts every (error, correct) voxel pair (ties half)."""
    def read(path: Path) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    per_case = []
    for seg_file in sorted(folder.glob("*.nii.gz")):
        seg, ref = read(seg_file) == 1, read(work / "nnUNet_raw" / QUICK_DATASET / "labelsTs" / seg_file.name) == 1
        dice = 2 * (seg & ref).sum() / (seg.sum() + ref.sum())
        error = seg != ref
        u = read(folder / "uncertainty" / f"{seg_file.name[:-len('.nii.gz')]}_uncertainty.nii.gz").astype(np.float64)
        pairs = u[error].ravel()[:, None] - u[~error].ravel()[None, :]
        per_case.append((float(dice), float((pairs > 0).mean() + 0.5 * (pairs == 0).mean())))
    assert len(per_case) == 2
    return per_case


@pytest.mark.slow
def test_refiner_checkpoint_records_its_warm_start_and_soft_starts(quick) -> None:
    ckpt = load_checkpoint_safe(_folder(quick, "PDDDPMTrainer_tiny_refiner") / "fold_0" / "checkpoint_final.pth")
    training = ckpt["pdddpm"]["training"]
    assert training["warm_start"] == "pre_segmenter"
    # the path the training read (the run was built in another folder when tests share it between workers)
    source = _folder(quick, "nnUNetTrainer_tiny") / "fold_0" / "checkpoint_final.pth"
    assert training["warm_start_source"].endswith(f"/{source.relative_to(quick)}")
    assert training["pre_segmentation_source"] == "out_of_fold" and training["pre_segmentation_soft"]
    assert ckpt["pdddpm"]["sampling"]["soft_pre_segmentation"] is True
    assert ckpt["pdddpm"]["sampling"]["uncertainty"] == "entropy"
    assert ckpt["pdddpm"]["sampling"]["pre_segmentation_weight"] == 0.25
    assert ckpt["pdddpm"]["sampling"]["lesion_gate"] is True
    assert ckpt["pdddpm"]["sampling"]["mirrored_members"] is True
    assert (_folder(quick, "PDDDPMTrainer_tiny_refiner") / "fold_0" / "pdddpm_t_prime.json").is_file()
    # the quick run's own two folds: nnU-Net trained each on the other's validation cases, and nothing else
    splits = load_json(quick / "nnUNet_preprocessed" / QUICK_DATASET / "splits_final.json")
    assert len(splits) == 2 and sorted(splits[0]["train"]) == sorted(splits[1]["val"])
    assert sorted(p.name for p in _folder(quick, "nnUNetTrainer_tiny").glob("fold_*")) == ["fold_0", "fold_1"]


@pytest.mark.slow
def test_benchmark_rows_and_uncertainty_figures(quick) -> None:
    result = json.loads((quick / "refiner.json").read_text())
    methods = {r["method"] for r in result["rows"]}
    assert {"nnU-Net", "nnU-Net + refiner's budget", "2 nnU-Nets (seeds) averaged", "PD-DDPM refiner"} <= methods
    for row in result["rows"]:
        assert row["cases"] == 2
        assert all(v == v for v in row["aurc"].values())  # finite AURC for every case score
        assert row["aurc"] and min(row["aurc"].values()) >= row["aurc_optimal"] - 1e-12
    refiner = next(r for r in result["rows"] if r["method"] == "PD-DDPM refiner")
    # the rows' Dice and error-AUROC against NumPy on the files the benchmark wrote (Dice of the label; AUROC by
    # counting every (error, correct) voxel pair)
    predictions = quick / "sampling" / "seed0" / "nnunet" / "predictions"
    nnunet = next(r for r in result["rows"] if r["method"] == "nnU-Net")
    assert nnunet["dice"] == pytest.approx(np.mean([d for d, _ in _dice_and_auroc(quick, predictions / "nnunet")]),
                                           abs=1e-6)
    entropy_run = _dice_and_auroc(quick, predictions / f"refiner_t{refiner['t_prime_per_seed']['0']}_entropy")
    assert refiner["dice"] == pytest.approx(np.mean([d for d, _ in entropy_run]), abs=1e-6)
    assert refiner["error_auroc"]["entropy"] == pytest.approx(np.mean([a for _, a in entropy_run]), abs=1e-6)
    assert set(refiner["error_auroc"]) >= {"variance", "entropy"}
    assert "delta_dice_vs_more" in refiner and "delta_dice_vs_ensemble" in refiner
    curve = result["learning_curves"]["0"]
    assert len(curve["mean_fg_dice"]) == 2  # the tiny run's two epochs
    # the plateau check on two epochs is the line through them: slope and half difference are their difference
    rise = curve["mean_fg_dice"][1] - curve["mean_fg_dice"][0]
    assert curve["plateau"]["slope_per_10_epochs"] == pytest.approx(10 * rise, abs=1e-9)
    assert curve["plateau"]["last_half_minus_first_half"] == pytest.approx(rise, abs=1e-12)
    assert (quick / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the curve, drawn


def _quick_trainer(work: Path, cls, monkeypatch):
    env = {"nnUNet_raw": work / "nnUNet_raw", "nnUNet_preprocessed": work / "nnUNet_preprocessed",
           "nnUNet_results": work / "results_seed0"}
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    pre = work / "nnUNet_preprocessed" / QUICK_DATASET
    plans = load_json(pre / "nnUNetPlans.json")
    plans["continue_training"] = False
    trainer = cls(plans, "2d", 0, load_json(pre / "dataset.json"), torch.device("cpu"))
    trainer.initialize()
    return trainer


def _fold_logits(folder: Path, fold: int, data: torch.Tensor) -> torch.Tensor:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (fold,), "checkpoint_final.pth")
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    with torch.no_grad():
        out = predictor.network.eval()(data)
    return out[0] if isinstance(out, (list, tuple)) else out


def _starts_at_index_0(work: Path, trainer, batch: dict, monkeypatch) -> tuple[torch.Tensor, dict[str, int]]:
    """The noisy masks (B, K, ...) one training step of ``batch`` feeds the network at timestep index 0 (there x_t is
    sqrt(ab) x0 + sqrt(1 - ab) eps with sqrt(1 - ab) ~ 0.006: the start up to noise), and the fold that holds each
    case out in the quick run's splits."""
    monkeypatch.setattr(trainer, "draw_timesteps", lambda b: torch.zeros((b,), dtype=torch.long))
    seen = []
    trainer.network.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    trainer.train_step(batch)
    splits = load_json(work / "nnUNet_preprocessed" / QUICK_DATASET / "splits_final.json")
    return seen[0][:, batch["data"].shape[1]:], {key: fold for fold, split in enumerate(splits) for key in split["val"]}


@pytest.mark.slow
def test_warm_started_trainer_predicts_its_nnunets_softmax_and_trains_on_out_of_fold_probabilities(
        quick, monkeypatch) -> None:
    from nnunet_pdddpm import PDDDPMTrainer_tiny_refiner

    all_oof = type("PDDDPMTrainer_tiny_refinerAll", (PDDDPMTrainer_tiny_refiner,), {"pre_segmentation_errors": 1.0})
    trainer = _quick_trainer(quick, all_oof, monkeypatch)
    trainer._warm_start()
    nnunet = _folder(quick, "nnUNetTrainer_tiny")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    data = batch["data"].float()

    # right after the warm start: the EMA denoiser's x0 estimate is fold 0's nnU-Net softmax, any t, any mask
    expected = torch.softmax(_fold_logits(nnunet, 0, data), 1)
    net = trainer.ema.shadow.eval()
    with torch.no_grad():
        for t in (0, 7, 19):
            x_t = torch.randn(data.shape[0], 2, *data.shape[2:])
            x0 = model_output(DiffusionConfig(prediction_type="sample", output_activation="softmax"),
                              net(torch.cat((data, x_t), 1), torch.full((data.shape[0],), t)))
            assert torch.allclose((x0 + 1) / 2, expected, atol=1e-5, rtol=0)

    # training starts: every sample diffused from 2p - 1 of the fold that held its case out
    x_t, holder = _starts_at_index_0(quick, trainer, batch, monkeypatch)
    for i, key in enumerate(batch["keys"]):
        assert holder[key] != 0
        probabilities = torch.softmax(_fold_logits(nnunet, holder[key], data[i:i + 1]), 1)[0]
        # x_t at index 0 is sqrt(ab) x0 + sqrt(1 - ab) eps with sqrt(1 - ab) ~ 0.006: within 0.05 everywhere
        assert torch.allclose(x_t[i], 2 * probabilities - 1, atol=0.05), key
        assert ((probabilities > 0.05) & (probabilities < 0.95)).any()  # soft values, not a one-hot mask


@pytest.mark.slow
def test_mirrored_training_starts_are_nnunets_test_time_augmented_out_of_fold_probabilities(quick, monkeypatch) -> None:
    """``pre_segmentation_mirroring``: each training start is 2p - 1 of the logits that nnU-Net's own predictor
    averages over its test-time mirrorings (``_internal_maybe_mirror_and_predict``), from the fold that held the case
    out; they differ from one pass, and the checkpoint settings record the option."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_pdddpm import PDDDPMTrainer_tiny_refiner

    mirrored = type("PDDDPMTrainer_tiny_refinerTTA", (PDDDPMTrainer_tiny_refiner,),
                    {"pre_segmentation_errors": 1.0, "pre_segmentation_mirroring": True})
    trainer = _quick_trainer(quick, mirrored, monkeypatch)
    assert trainer.pdddpm_settings()["training"]["pre_segmentation_mirroring"] is True
    assert PDDDPMTrainer_tiny_refiner.pre_segmentation_mirroring is False  # the default recipe: one pass
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    data = batch["data"].float()
    x_t, holder = _starts_at_index_0(quick, trainer, batch, monkeypatch)
    nnunet = _folder(quick, "nnUNetTrainer_tiny")
    for i, key in enumerate(batch["keys"]):
        predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=True, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(nnunet), (holder[key],), "checkpoint_final.pth")
        predictor.network.load_state_dict(predictor.list_of_parameters[0])
        predictor.network.eval()
        assert len(predictor.allowed_mirroring_axes) == 2  # the 2D model mirrors along both axes
        with torch.no_grad():
            tta = torch.softmax(predictor._internal_maybe_mirror_and_predict(data[i:i + 1]), 1)[0]
        one_pass = torch.softmax(_fold_logits(nnunet, holder[key], data[i:i + 1]), 1)[0]
        # x_t at index 0 is sqrt(ab) x0 + sqrt(1 - ab) eps with sqrt(1 - ab) ~ 0.006: within 0.05 everywhere
        assert torch.allclose(x_t[i], 2 * tta - 1, atol=0.05), key
        assert (tta - one_pass).abs().max() > 0.1  # the mirrorings changed the start


@pytest.mark.slow
def test_the_papers_recipe_trains_on_the_argmax_of_the_fold_that_held_each_case_out(quick, monkeypatch) -> None:
    """Hard out-of-fold starts (the paper's recipe with ``pre_segmentation_source = "out_of_fold"``): at index 0
    each sample's mask is the one-hot argmax of the fold that held its case out, on the benchmark's two folds."""
    from nnunet_pdddpm import PDDDPMTrainer_tiny

    hard = type("PDDDPMTrainer_tinyOOF", (PDDDPMTrainer_tiny,), {
        "diffusion_config": DiffusionConfig(prediction_type="sample", output_activation="softmax"),
        "pre_segmentation_errors": 1.0, "pre_segmentation_source": "out_of_fold",
        "pre_segmenter_trainers": ("nnUNetTrainer_tiny",)})
    trainer = _quick_trainer(quick, hard, monkeypatch)
    assert trainer.pdddpm_settings()["training"]["pre_segmentation_source"] == "out_of_fold"
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    x_t, holder = _starts_at_index_0(quick, trainer, batch, monkeypatch)
    mask = x_t > 0  # at index 0, x_t is x_0 up to noise of sd 0.006
    nnunet = _folder(quick, "nnUNetTrainer_tiny")
    for i, key in enumerate(batch["keys"]):
        assert holder[key] != 0  # a training case of fold 0...
        argmax = _fold_logits(nnunet, holder[key], batch["data"][i:i + 1].float()).argmax(1)  # ...its holder's
        assert torch.equal(mask[i], torch.cat([argmax == 0, argmax == 1])), key


# ---------------------------------------------------------------- the default recipe and resuming across recipes
def test_default_trainer_is_the_refiner_and_the_papers_recipe_keeps_its_name() -> None:
    import nnunet_pdddpm.trainers as trainers
    from nnunet_pdddpm import PDDDPMTrainer, PDDDPMTrainer_paper

    assert PDDDPMTrainer.warm_start == "pre_segmenter" and PDDDPMTrainer.pre_segmentation_soft
    assert PDDDPMTrainer.diffusion_config == DiffusionConfig(prediction_type="sample", output_activation="softmax")
    assert PDDDPMTrainer.pre_segmenter_trainers == ("nnUNetTrainer",)
    assert (PDDDPMTrainer.sampler, PDDDPMTrainer.steps, PDDDPMTrainer.ensemble_size) == ("ddim", 5, 5)
    assert PDDDPMTrainer.pre_segmentation_weight == 0.25 and PDDDPMTrainer_paper.pre_segmentation_weight == 0
    assert PDDDPMTrainer.lesion_gate is True and PDDDPMTrainer_paper.lesion_gate is False
    assert PDDDPMTrainer.mirrored_members is True and PDDDPMTrainer_paper.mirrored_members is False
    paper = PDDDPMTrainer_paper
    assert paper.warm_start is None and paper.diffusion_config == DiffusionConfig()
    assert (paper.t_prime, paper.ensemble_size, paper.sampler, paper.steps) == (300, 5, "ddpm", None)
    # the demo's and the paper's variants keep the paper's recipe; only the refiner variants warm-start
    for name in trainers.TRAINER_NAMES:
        cls = getattr(trainers, name)
        if issubclass(cls, paper):
            refiner = name == "PDDDPMTrainer" or ("refiner" in name and not name.endswith("_paper"))
            assert (cls.warm_start is not None) == refiner, name


@pytest.mark.slow
def test_resuming_a_checkpoint_of_another_recipe_is_refused(quick, monkeypatch, tmp_path) -> None:
    from nnunet_pdddpm import PDDDPMTrainer_tiny_refiner

    trainer = _quick_trainer(quick, PDDDPMTrainer_tiny_refiner, monkeypatch)
    path = _folder(quick, "PDDDPMTrainer_tiny_refiner") / "fold_0" / "checkpoint_final.pth"
    ckpt = load_checkpoint_safe(path)
    trainer.load_checkpoint(ckpt)  # its own recipe resumes
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    paper = dict(ckpt, pdddpm={**ckpt["pdddpm"], "diffusion": DiffusionConfig().to_dict(),
                               "training": {**ckpt["pdddpm"]["training"], "warm_start": None}})
    paper["network_weights"] = {k: torch.zeros_like(v) for k, v in ckpt["network_weights"].items()}
    torch.save(paper, tmp_path / "paper.pth")
    with pytest.raises(PDDDPMUserError, match=r"paper\.pth was written with another recipe than "
                                              r"PDDDPMTrainer_tiny_refiner \(prediction_type 'epsilon' .*warm_start "
                                              r"None .*PDDDPMTrainer_paper"):
        trainer.load_checkpoint(str(tmp_path / "paper.pth"))
    after = trainer.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # refused before any weight was loaded


def test_benchmark_trains_every_denoiser_after_the_folds_it_reads() -> None:
    from benchmarks.benchmark_refiner import FULL, QUICK, training_stages

    first, second = training_stages([0, 2], FULL)
    assert set(first) == {(s, FULL.pre_segmenter, f) for s in (0, 2) for f in range(5)} | {(1, FULL.pre_segmenter, 0)}
    assert len(first) == len(set(first)) == 11  # seed 2's partner is seed 1 (fold 0 only); seed 0's is seed 1 too
    assert sorted(second) == sorted((s, t, 0) for s in (0, 2) for t in (FULL.refiner, FULL.more, FULL.paper))
    quick_first, _ = training_stages([0], QUICK)  # the tests' run: the two folds of its own splits_final.json
    assert sorted(quick_first) == [(0, QUICK.pre_segmenter, f) for f in (0, 1)] + [(1, QUICK.pre_segmenter, 0)]


def test_benchmark_at_three_times_the_refiners_budget_shares_the_nnunets_and_samples_apart(tmp_path) -> None:
    """``--refiner_budget 3`` trains the x3 refiner and nnU-Net-more on the same plateaued nnU-Nets; its samples and
    outputs go beside the default's, so neither run reuses the other's predictions of another model."""
    import dataclasses

    import nnunet_pdddpm.trainers as trainers
    from benchmarks.benchmark_refiner import BUDGET_X3, FULL, main, training_stages

    x3 = dataclasses.replace(FULL, **BUDGET_X3)
    first, second = training_stages([0], x3)
    assert first == training_stages([0], FULL)[0]
    assert second == [(0, "PDDDPMTrainer_refinerCPU_x3", 0), (0, "nnUNetTrainer_refinerCPU_more_x3", 0)]
    for base, longer in (("PDDDPMTrainer_refinerCPU", "PDDDPMTrainer_refinerCPU_x3"),
                         ("nnUNetTrainer_refinerCPU_more", "nnUNetTrainer_refinerCPU_more_x3")):
        a, b = getattr(trainers, base).init_settings, getattr(trainers, longer).init_settings
        assert b == {**a, "num_epochs": 3 * a["num_epochs"]}
    assert x3.tag != FULL.tag and x3.paper is None  # its sampling folder and outputs: sampling_x3, refiner_x3
    with pytest.raises(SystemExit, match="--refiner_budget 3 is for the full benchmark's models"):
        main(["-o", str(tmp_path / "work"), "--quick", "--refiner_budget", "3"])
    from benchmarks.refiner_sampling_study import main as study

    for flags in (["--quick"], ["--demo", str(tmp_path / "demo")]):
        with pytest.raises(SystemExit, match="--refiner_budget 3 is for the full benchmark's models"):
            study(["-o", str(tmp_path / "work"), *flags, "--refiner_budget", "3"])
    assert not (tmp_path / "work").exists()


def test_benchmark_with_a_decaying_refiner_schedule_trains_apart_and_decays_to_zero(tmp_path) -> None:
    """``--refiner_schedule poly``: the poly refiner and nnU-Net-more on the same nnU-Nets, sampled apart; their
    learning rate follows nnU-Net's poly schedule from ``initial_lr`` where the default's stays constant."""
    import dataclasses

    import nnunet_pdddpm.trainers as trainers
    from benchmarks.benchmark_refiner import FULL, SCHEDULE_POLY, main, training_stages, with_refiner_budget
    from nnunet_pdddpm.trainers.variants.mixins import _DecayingLR

    poly = with_refiner_budget(FULL, 1, "poly")
    assert poly == dataclasses.replace(FULL, **SCHEDULE_POLY) and poly.tag == "_poly" and poly.paper is None
    assert training_stages([0], poly)[1] == [(0, "PDDDPMTrainer_refinerCPU_poly", 0),
                                             (0, "nnUNetTrainer_refinerCPU_more_poly", 0)]
    for base, decaying in (("PDDDPMTrainer_refinerCPU", "PDDDPMTrainer_refinerCPU_poly"),
                           ("nnUNetTrainer_refinerCPU_more", "nnUNetTrainer_refinerCPU_more_poly")):
        cls = getattr(trainers, decaying)
        assert cls.__mro__[1:3] == (_DecayingLR, getattr(trainers, base))
        assert cls.init_settings == getattr(trainers, base).init_settings  # same budget, same initial rate

    class Constant:
        initial_lr, num_epochs = 1e-3, 10
        network = torch.nn.Linear(2, 2)

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr)
            return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)

    optimizer, schedule = type("Decaying", (_DecayingLR, Constant), {})().configure_optimizers()
    for epoch in (0, 5, 9):
        schedule.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - epoch / 10) ** 0.9)
    with pytest.raises(SystemExit, match="--refiner_schedule poly is for the full benchmark's models"):
        main(["-o", str(tmp_path / "work"), "--quick", "--refiner_schedule", "poly"])
    with pytest.raises(SystemExit, match="separate runs; give one of them"):
        main(["-o", str(tmp_path / "work"), "--refiner_budget", "3", "--refiner_schedule", "poly"])
    assert not (tmp_path / "work").exists()


def test_benchmark_with_mirrored_training_starts_shares_the_nnunets_and_the_same_budget_yardstick(tmp_path) -> None:
    """``--refiner_starts mirrored`` trains only the refiner whose starts are test-time augmented; the same-budget
    nnU-Net is the default run's (the same training without diffusion), sampled apart under the ``_tta`` tag."""
    from benchmarks.benchmark_refiner import FULL, main, training_stages, with_refiner_budget
    from benchmarks.refiner_sampling_study import main as study
    from nnunet_pdddpm import PDDDPMTrainer_refinerCPU, PDDDPMTrainer_refinerCPU_tta

    tta = with_refiner_budget(FULL, 1, "constant", "mirrored")
    assert (tta.tag, tta.paper, tta.more) == ("_tta", None, FULL.more)
    assert training_stages([0], tta) == [training_stages([0], FULL)[0],
                                         [(0, "PDDDPMTrainer_refinerCPU_tta", 0), (0, FULL.more, 0)]]
    assert PDDDPMTrainer_refinerCPU_tta.__mro__[1] is PDDDPMTrainer_refinerCPU
    assert PDDDPMTrainer_refinerCPU_tta.pre_segmentation_mirroring is True
    assert PDDDPMTrainer_refinerCPU.pre_segmentation_mirroring is False
    with pytest.raises(SystemExit, match="--refiner_starts mirrored is for the full benchmark's models"):
        main(["-o", str(tmp_path / "work"), "--quick", "--refiner_starts", "mirrored"])
    with pytest.raises(SystemExit, match="--refiner_schedule poly and --refiner_starts mirrored are separate runs"):
        study(["-o", str(tmp_path / "work"), "--refiner_schedule", "poly", "--refiner_starts", "mirrored"])
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_predict_takes_the_refiners_soft_start_and_map_unless_told_otherwise(quick, tmp_path) -> None:
    """Without flags, predict samples from the refiner's stored soft start, fusion, lesion gate and mirrored members
    and writes its entropy map; the CLI's own defaults must not override what the checkpoint says (a silent switch to
    the paper's argmax)."""
    import numpy as np
    import SimpleITK as sitk
    from conftest import cli_runs, run_cli

    env = nnunet_env(quick)
    env.update(nnUNet_raw=str(quick / "nnUNet_raw"), nnUNet_preprocessed=str(quick / "nnUNet_preprocessed"),
               nnUNet_results=str(quick / "results_seed0"))
    images = sorted((quick / "nnUNet_raw" / QUICK_DATASET / "imagesTs").glob("*_0000.nii.gz"))[:1]
    one_case = tmp_path / "in"
    one_case.mkdir()
    case = images[0].name[:-len("_0000.nii.gz")]
    for image in (quick / "nnUNet_raw" / QUICK_DATASET / "imagesTs").glob(f"{case}_*.nii.gz"):
        (one_case / image.name).write_bytes(image.read_bytes())

    runs = {"default": [],
            "soft": ["--soft_pre_segmentation", "-uncertainty", "entropy", "-preseg_weight", "0.25", "--lesion_gate",
                     "--mirrored_members"],
            "hard": ["--hard_pre_segmentation"],
            "unfused": ["-preseg_weight", "0", "--no_lesion_gate"],
            "ungated": ["--no_lesion_gate"],
            "unmirrored": ["--no_mirrored_members"]}
    # the predictions in one process (the console script's main, one import of the stack)
    cli_runs("nnunet_pdddpm.cli.predict", [
        ["-i", str(one_case), "-o", str(tmp_path / name), "-d", QUICK_DATASET, "-c", "2d", "-f", "0",
         "-tr", "PDDDPMTrainer_tiny_refiner", "-preseg_tr", "nnUNetTrainer_tiny", "-device", "cpu", "-t_prime", "10",
         "-ensemble_size", "2", "-npp", "1", "-nps", "1", "--disable_progress_bar", "--save_probabilities", *flags]
        for name, flags in runs.items()], env)

    def outputs(name: str) -> tuple[np.ndarray, np.ndarray, dict]:
        out = tmp_path / name
        unc = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty" / f"{case}_uncertainty.nii.gz")))
        probabilities = np.load(out / f"{case}.npz")["probabilities"]
        return probabilities, unc, json.loads((out / "uncertainty" / "case_scores.json").read_text())

    default, soft, hard, unfused, ungated, unmirrored = (outputs(name) for name in runs)
    assert default[2][case]["uncertainty"] == "entropy"
    np.testing.assert_array_equal(default[0], soft[0])
    np.testing.assert_array_equal(default[1], soft[1])
    assert not np.array_equal(default[0], hard[0])  # the argmax start gives other samples
    assert not np.array_equal(default[0], unmirrored[0])  # the stored mirroring: other members
    # the stored fusion: the same samples, a quarter of nnU-Net's softmax mixed into the result
    run_cli(["nnUNetv2_predict", "-i", str(one_case), "-o", str(tmp_path / "nnunet"), "-d", QUICK_DATASET, "-c", "2d",
             "-f", "0", "-tr", "nnUNetTrainer_tiny", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--save_probabilities", "--disable_progress_bar"], env)
    nnunet = np.load(tmp_path / "nnunet" / f"{case}.npz")["probabilities"]
    assert not np.allclose(ungated[0], unfused[0], atol=1e-3)
    np.testing.assert_allclose(ungated[0], 0.75 * unfused[0] + 0.25 * nnunet, atol=1e-3)
    # the stored lesion gate: where it acts, nnU-Net's probabilities; the lesions are nnU-Net's
    from nnunet_pdddpm.evaluation.lesions import lesion_precision, lesion_recall

    gated = (default[0] != ungated[0]).any(0)
    np.testing.assert_allclose(default[0][:, gated], nnunet[:, gated], atol=1e-3)
    mine, theirs = default[0].argmax(0) == 1, nnunet.argmax(0) == 1
    assert lesion_precision(theirs, mine) == 1.0 and lesion_recall(theirs, mine) == 1.0


@pytest.mark.slow
def test_sampling_study_compares_fast_fused_and_gated_sampling(quick) -> None:
    """``benchmarks/refiner_sampling_study.py --quick`` on the benchmark's models: one row per setting, paired against
    nnU-Net and DDIM 5 unfused; fusion and gating reuse its samples (same network evaluations), ten DDIM
    steps cost twice five."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "benchmarks.refiner_sampling_study", "-o", str(quick), "--quick",
               "--settings", "ddim10", "fused", "gated"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["setting"]: r for r in json.loads((quick / "refiner_sampling.json").read_text())["rows"]}
    default, ten = rows["DDIM 5 steps, unfused"], rows["DDIM 10 steps"]
    fused, gated = rows["DDIM 5, fused with nnU-Net (w 0.5)"], rows["DDIM 5, confidence gate 0.9"]
    assert {r["n"] for r in rows.values()} == {2}  # seed 0 x the quick benchmark's two test cases
    pre_nfe = rows["nnU-Net"]["nfe"]
    assert ten["nfe"] - pre_nfe == pytest.approx(2 * (default["nfe"] - pre_nfe))
    assert fused["nfe"] == gated["nfe"] == default["nfe"]
    assert "delta_dice_vs_ddim5" not in default and len(fused["delta_dice_vs_ddim5"]) == 3
    # the error-AUROC of the map predict writes, with fusion the entropy of the delivered probabilities (fused
    # against the ensemble's NumPy entropy in test_sampling.py), counted over every (error, correct) voxel pair
    per_case = _dice_and_auroc(quick, quick / "sampling" / "seed0" / "nnunet" / "predictions" / "study_t10_fused")
    assert fused["entropy_auroc"] == pytest.approx(np.mean([a for _, a in per_case]), abs=1e-6)
    # the case AURC of each row: the members' disagreement (nnU-Net: its mean softmax entropy), risk 1 - Dice
    from nnunet_pdddpm.evaluation.risk_coverage import aurc

    folder = quick / "sampling" / "seed0" / "nnunet" / "predictions" / "study_t10_fused"
    log = json.loads((folder / "pdddpm_cases.json").read_text())
    names = sorted(f.name[:-len(".nii.gz")] for f in folder.glob("*.nii.gz"))  # _dice_and_auroc's order
    assert fused["aurc"] == pytest.approx(aurc([1 - log[c]["scores"]["pairwise_dice"] for c in names],
                                               [1 - d for d, _ in per_case]), abs=1e-9)
    assert all(np.isfinite(r["aurc"]) for r in rows.values())
    # and against the quick benchmark's same-budget nnU-Net, which benchmark_refiner scored in the same work folder
    assert all(len(r["delta_dice_vs_more"]) == 3 for r in rows.values())


def test_a_trainer_made_in_python_leaves_the_excepthook_alone(nnunet_root, monkeypatch) -> None:
    """Only nnU-Net's own commands get the one-sentence excepthook; a notebook or script keeps its own."""
    before = sys.excepthook
    _construct(nnunet_root, _tiny(), monkeypatch)
    assert sys.excepthook is before and not getattr(sys.excepthook, "_pdddpm", False)


def test_sampling_attributes_travel_as_one_value_to_the_checkpoint_and_back(nnunet_root, monkeypatch) -> None:
    from nnunet_pdddpm import PDDDPMTrainer_tiny_refiner

    trainer = _construct(nnunet_root, PDDDPMTrainer_tiny_refiner, monkeypatch)
    defaults = trainer.sampling
    assert (defaults.t_prime, defaults.ensemble_size, defaults.sampler, defaults.steps) == (
        trainer.t_prime, trainer.ensemble_size, trainer.sampler, trainer.steps)
    assert defaults.soft_pre_segmentation is True and defaults.uncertainty == "entropy"
    assert SamplingSettings.from_stored(defaults.stored()) == defaults
    # a checkpoint written before the lesion gate existed keeps sampling as it did then: no gate
    import dataclasses

    older = {k: v for k, v in defaults.stored().items() if k != "lesion_gate"}
    assert SamplingSettings.from_stored(older) == dataclasses.replace(defaults, lesion_gate=False)
    older = {k: v for k, v in defaults.stored().items() if k != "mirrored_members"}  # before 0.2.4: unmirrored
    assert SamplingSettings.from_stored(older) == dataclasses.replace(defaults, mirrored_members=False)
    # set on the instance (nnU-Net style, in a subclass's __init__): whole or one field; what the checkpoint stores
    # (pdddpm_settings) and the final validation samples with is this value
    trainer.sampling = SamplingSettings(t_prime=7, ensemble_size=2, sampler="ddim", steps=3)
    assert (trainer.t_prime, trainer.steps, trainer.soft_pre_segmentation) == (7, 3, False)
    trainer.ensemble_size = 4
    assert trainer.sampling == SamplingSettings(t_prime=7, ensemble_size=4, sampler="ddim", steps=3)
    assert PDDDPMTrainer_tiny_refiner.sampling == defaults  # the class is untouched
    with pytest.warns(FutureWarning, match="sampling_defaults"):
        assert trainer.sampling_defaults() == trainer.sampling
    # a checkpoint that stores no start encoding and no map reads as the paper's recipe
    older = SamplingSettings.from_stored({"t_prime": 300, "ensemble_size": 5, "sampler": "ddpm", "steps": None})
    assert older.soft_pre_segmentation is False and older.uncertainty == "variance"
