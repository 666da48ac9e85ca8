"""``nnunet_pdddpm_predict`` end to end on generated NIfTI files, and its refusals of bad input."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATASET, DATASET_ID, cli_in_one_process, cli_refusals, cli_runs, nnunet_env, run_cli

COMMON = ["-d", str(DATASET_ID), "-c", "2d", "-tr", "PDDDPMTrainer_tiny", "-preseg_tr", "PDDDPMAttUNetTrainer_tiny",
          "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "-t_prime", "30", "-ensemble_size", "2",
          "--disable_progress_bar"]
PREDICT = "nnunet_pdddpm.cli.predict"


def predict(env, inp, out, *extra):
    return run_cli(["nnunet_pdddpm_predict", "-i", str(inp), "-o", str(out), *COMMON, *extra], env)


def arrays(folder):
    return {f: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f)))
            for f in sorted(os.listdir(folder)) if f.endswith(".nii.gz")}


@pytest.fixture(scope="module")
def first_run(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "out"
    env = nnunet_env(trained)
    predict(env, trained / "raw" / DATASET / "imagesTs", out, "--save_probabilities")
    return trained, env, out


def test_outputs_keep_input_geometry_and_labels(first_run):
    root, _, out = first_run
    for img_file in sorted((root / "raw" / DATASET / "imagesTs").iterdir()):
        case = img_file.name.replace("_0000.nii.gz", "")
        ref = sitk.ReadImage(str(img_file))
        seg = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        unc = sitk.ReadImage(str(out / "uncertainty" / f"{case}_uncertainty.nii.gz"))
        for im in (seg, unc):
            assert im.GetSize() == ref.GetSize()
            np.testing.assert_allclose(im.GetSpacing(), ref.GetSpacing(), rtol=1e-6)
            np.testing.assert_allclose(im.GetOrigin(), ref.GetOrigin(), rtol=1e-6)
            np.testing.assert_allclose(im.GetDirection(), ref.GetDirection(), atol=1e-6)
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}
        assert unc.GetPixelID() == sitk.sitkFloat32
        u = sitk.GetArrayFromImage(unc)
        probs = np.load(out / f"{case}.npz")["probabilities"]
        assert probs.shape == (2, *sitk.GetArrayFromImage(ref).shape)
        np.testing.assert_allclose(probs.sum(0), 1, atol=1e-4)
        # the variance of the members' probabilities (two classes: both the same) is positive where they disagree
        # and at most p(1 - p) for their mean p (Bhatia-Davis bound for values in [0, 1])
        assert np.isfinite(u).all() and u.max() > 0
        assert (u <= probs[1] * (1 - probs[1]) + 1e-5).all(), float((u - probs[1] * (1 - probs[1])).max())
        # segmentation is the mean foreground probability thresholded at 0.5 (binary dataset)
        assert np.mean((probs[1] > 0.5) == (sitk.GetArrayFromImage(seg) == 1)) > 0.999
    assert not list(out.rglob(".pdddpm_partial"))


@pytest.fixture(scope="module")
def later_runs(first_run, tmp_path_factory):
    """The first run's cases again in two parts (-num_parts 2), and the first run's output with one case removed, as
    if killed before its last rename, continued (--continue_prediction): one process, one import of the stack."""
    root, env, out = first_run
    inp, work = root / "raw" / DATASET / "imagesTs", tmp_path_factory.mktemp("later")
    partial = work / "partial"
    shutil.copytree(out, partial)
    (partial / "case_009.nii.gz").unlink()
    (partial / "uncertainty" / "case_009_uncertainty.nii.gz").unlink()
    untouched = (partial / "case_008.nii.gz").stat().st_mtime_ns
    parts = ["-i", str(inp), "-o", str(work / "parts"), *COMMON, "--save_probabilities", "-num_parts", "2"]
    stdout = cli_runs(PREDICT, [[*parts, "-part_id", "0"], [*parts, "-part_id", "1"],
                                ["-i", str(inp), "-o", str(partial), *COMMON, "--save_probabilities",
                                 "--continue_prediction"]], env)
    return work, untouched, stdout[2]


def test_two_parts_give_the_same_files_as_one_run(first_run, later_runs):
    _, _, out = first_run
    work, _, _ = later_runs
    a, b = arrays(out), arrays(work / "parts")
    assert a.keys() == b.keys() and len(a) == 2
    for f in a:
        np.testing.assert_array_equal(a[f], b[f])
    ua, ub = arrays(out / "uncertainty"), arrays(work / "parts" / "uncertainty")
    for f in ua:
        np.testing.assert_array_equal(ua[f], ub[f])
    # each part merged its case into the one scores file
    assert case_scores(work / "parts") == case_scores(out)


def case_scores(out):
    return json.loads((out / "uncertainty" / "case_scores.json").read_text())


def test_case_scores_list_every_case_with_finite_values(first_run):
    root, _, out = first_run
    scores = case_scores(out)
    cases = sorted(f.name.replace("_0000.nii.gz", "") for f in (root / "raw" / DATASET / "imagesTs").iterdir())
    assert sorted(scores) == cases
    for case, s in scores.items():
        assert s["uncertainty"] == "variance"
        values = [s["pairwise_dice"], s["mean_uncertainty"]]
        # over the voxels the mean or a member calls foreground: defined wherever the segmentation has some (a
        # briefly trained model may segment nothing in a case, and then no member may either: None)
        segmented = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz"))).any()
        if segmented or s["mean_uncertainty_foreground"] is not None:
            values.append(s["mean_uncertainty_foreground"])
        assert all(isinstance(v, float) and np.isfinite(v) for v in values), (case, s)
        assert 0 < s["pairwise_dice"] <= 1  # two samples from the same start overlap
        # the score is the mean of the written map (the generated images fill their grid: nothing is cropped)
        u = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty" / f"{case}_uncertainty.nii.gz")))
        assert s["mean_uncertainty"] == pytest.approx(float(u.astype(np.float64).mean()), rel=1e-4)


def test_continue_prediction_only_predicts_what_is_missing(first_run, later_runs):
    _, _, out = first_run
    work, untouched, stdout = later_runs
    partial = work / "partial"
    assert "1 cases already predicted; 1 to go." in stdout
    assert (partial / "case_008.nii.gz").stat().st_mtime_ns == untouched
    a, b = arrays(out), arrays(partial)
    for f in a:
        np.testing.assert_array_equal(a[f], b[f])


def _fails(env, args):
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet_pdddpm_predict")
    proc = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_bad_inputs_get_one_clear_sentence(first_run, tmp_path):
    root, env, _ = first_run
    inp, out = root / "raw" / DATASET / "imagesTs", str(tmp_path / "o")
    bad = tmp_path / "extra_channel"
    shutil.copytree(inp, bad)
    shutil.copy(bad / "case_008_0000.nii.gz", bad / "case_008_0001.nii.gz")
    args = ["-i", str(inp), "-o", out, *COMMON]
    refusals = {
        "-o must differ from -i": ["-i", str(inp), "-o", str(inp), *COMMON],
        "-t_prime must be between 0 and T=1000": [*args, "-t_prime", "2000"],
        "-ensemble_size must be at least 1": [*args, "-ensemble_size", "0"],
        "does not exist": ["-i", str(tmp_path / "missing"), "-o", out, *COMMON],
        "Case case_008 has 2 channel files but the model expects 1": ["-i", str(bad), "-o", out, *COMMON],
        "Pre-segmentation model folder .* does not exist": [*args, "-preseg_tr", "nnUNetTrainer"],
        "was not written by PDDDPMTrainer": [*args, "-tr", "PDDDPMAttUNetTrainer_tiny"],
        # fusion and uncertainty flags
        "-preseg_weight must be in [0, 1], got 1.5.": [*args, "-preseg_weight", "1.5"],
        "-confidence_gate must be in (1/K, 1]": [*args, "-confidence_gate", "0"],
        "--vanilla does not use": [*args, "-confidence_gate", "0.9", "--vanilla"],
        "--lesion_gate mix in the pre-segmenter's probabilities, which --vanilla": [*args, "--lesion_gate",
                                                                                    "--vanilla"],
        # known only once the model is loaded: two classes, so the gate must exceed 1/2
        "-confidence_gate must be above 1/K = 0.5": [*args, "-confidence_gate", "0.5"],
        "variance and entropy only": [*args, "-uncertainty", "mutual_information", "--uncertainty_per_class"],
        # worker counts and the seed (nnU-Net's iterator asserted on -npp 0; numpy's SeedSequence raised on -1)
        "-npp must be at least 1, got 0.": [*args, "-npp", "0"],
        "-nps must be at least 1, got 0.": [*args, "-nps", "0"],
        "-seed must be at least 0, got -1.": [*args, "-seed", "-1"],
    }
    for expected, line in zip(refusals, cli_refusals(PREDICT, list(refusals.values()), env)):
        assert re.search(expected, line) if ".*" in expected else expected in line, (expected, line)
    assert not (tmp_path / "o").exists() or not any(p.is_file() for p in (tmp_path / "o").rglob("*"))
    # the console script itself: same sentence, exit 2, no traceback
    assert "-ensemble_size must be at least 1" in _fails(env, [*args, "-ensemble_size", "0"])


def test_help_explains_every_flag():
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet_pdddpm_predict")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("-preseg_probabilities", "-t_prime", "-ensemble_size", "-sampler", "-steps", "-seed", "--vanilla",
                 "-uncertainty", "-num_parts", "--continue_prediction", "--save_probabilities"):
        assert flag in out


def test_saved_probabilities_of_any_model_serve_as_pre_segmentation(first_run, tmp_path):
    """nnUNetv2_predict --save_probabilities -> -preseg_probabilities; with T'=0 the output is that model's seg."""
    root, env, _ = first_run
    inp = root / "raw" / DATASET / "imagesTs"
    run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "nnunet"), "-d", str(DATASET_ID), "-c", "2d",
             "-tr", "PDDDPMAttUNetTrainer_tiny", "-f", "0", "-device", "cpu", "--save_probabilities", "-npp", "1",
             "-nps", "1"], env)
    missing = tmp_path / "nnunet_missing"
    shutil.copytree(tmp_path / "nnunet", missing)
    (missing / "case_009.npz").unlink()
    (code, _, _), (refused, _, err) = cli_in_one_process(PREDICT, [
        ["-i", str(inp), "-o", str(tmp_path / "pd"), *COMMON, "-preseg_probabilities", str(tmp_path / "nnunet"),
         "-t_prime", "0"],
        ["-i", str(inp), "-o", str(tmp_path / "o2"), *COMMON, "-preseg_probabilities", str(missing)]], env)
    assert code == 0
    a, b = arrays(tmp_path / "nnunet"), arrays(tmp_path / "pd")
    assert a.keys() == b.keys() and len(a) == 2
    for f in a:
        np.testing.assert_array_equal(a[f], b[f])
    assert refused == 2 and "error: No pre-segmentation probabilities for case case_009" in err, err
