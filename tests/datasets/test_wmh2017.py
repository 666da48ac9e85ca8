"""``nnunet_pdddpm_convert_wmh2017`` on a small replica of the challenge's layout, through the console script.

The replica has the release's structure (``training/`` and ``test/``, Amsterdam nested by scanner, an
``orig/`` folder that is not a case, one uncompressed ``.nii``), tiny random volumes with a different
non-trivial geometry per site, and WMH references with a few label-2 voxels.
"""
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_pdddpm.datasets import paper_split

DATASET_ID = 973
DATASET = f"Dataset{DATASET_ID}_WMH2017"


def rotation(degrees):
    a = np.deg2rad(degrees)
    return tuple(np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]).ravel())


# site -> (shape (z, y, x), spacing, origin, direction, wmh pixel type)
SITES = {
    "Utrecht": ((5, 16, 14), (0.96, 0.95, 3.0), (-120.5, 98.25, -40.0), rotation(12), np.float32),
    "Singapore": ((6, 12, 15), (1.0, 1.0, 3.0), (90.0, 110.0, -30.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1), np.uint8),
    "Amsterdam": ((4, 14, 13), (0.98, 0.98, 1.2), (10.0, -20.0, 5.0), (0, 1, 0, 1, 0, 0, 0, 0, -1), np.float64),
}
TRAINING = {  # source folder below training/ -> case id
    "Utrecht/0": "Utrecht_0", "Utrecht/2": "Utrecht_2", "Singapore/50": "Singapore_50",
    "Singapore/51": "Singapore_51", "Amsterdam/GE3T/100": "Amsterdam_GE3T_100",
}
TEST = {
    "Amsterdam/GE1T5/137": "Amsterdam_GE1T5_137", "Amsterdam/Philips_VU_PETMR_01/140":
    "Amsterdam_Philips_VU_PETMR_01_140", "Utrecht/1": "Utrecht_1",
}
UNCOMPRESSED_T1 = "training/Singapore/51"


def write_image(array, site, path):
    shape, spacing, origin, direction, _ = SITES[site]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))


def make_case(folder, site, rng, t1_ending=".nii.gz"):
    shape, *_, wmh_type = SITES[site]
    write_image(rng.normal(100, 20, shape).astype(np.float32), site, folder / "pre" / "FLAIR.nii.gz")
    write_image(rng.normal(50, 10, shape).astype(np.float32), site, folder / "pre" / f"T1{t1_ending}")
    write_image(rng.normal(0, 1, shape).astype(np.float32), site, folder / "orig" / "FLAIR.nii.gz")
    wmh = (rng.random(shape) < 0.1).astype(wmh_type)
    wmh[rng.random(shape) < 0.03] = 2
    wmh[1, 2, 3], wmh[2, 4, 5] = 1, 2  # every case has both labels
    write_image(wmh, site, folder / "wmh.nii.gz")


@pytest.fixture(scope="module")
def wmh_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wmh")
    rng = np.random.default_rng(0)
    for subset, cases in (("training", TRAINING), ("test", TEST)):
        for source in cases:
            folder = root / subset / source
            make_case(folder, source.split("/")[0], rng, ".nii" if f"{subset}/{source}" == UNCOMPRESSED_T1 else
                      ".nii.gz")
    (root / "README.txt").write_text("not a case\n")
    return root


def nnunet_env(base: Path) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(base / "raw"), nnUNet_preprocessed=str(base / "preprocessed"),
               nnUNet_results=str(base / "results"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1",
               OMP_NUM_THREADS="1")
    return env


def run(args, env, check=True):
    exe = Path(sys.executable).parent / args[0]
    proc = subprocess.run([str(exe), *map(str, args[1:])], env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def convert(root, env, *flags, check=True):
    return run(["nnunet_pdddpm_convert_wmh2017", "-i", root, "-d", DATASET_ID, *flags], env, check)


@pytest.fixture(scope="module")
def converted(wmh_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("nnunet")
    env = nnunet_env(base)
    proc = convert(wmh_root, env, "-paper_split", "0")
    return base, env, proc


def read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), (image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def test_layout_channels_labels_and_masks(wmh_root, converted):
    base, _, proc = converted
    folder = base / "raw" / DATASET
    assert f"{DATASET}: 5 training and 3 test case(s)" in proc.stdout
    assert sorted(p.name for p in (base / "raw").iterdir()) == [DATASET]  # nothing hidden left behind
    for subset, suffix, cases in (("training", "Tr", TRAINING), ("test", "Ts", TEST)):
        assert sorted(p.name for p in (folder / f"labels{suffix}").iterdir()) == sorted(f"{c}.nii.gz" for c in
                                                                                      cases.values())
        assert len(list((folder / f"images{suffix}").iterdir())) == 2 * len(cases)
        for source, case in cases.items():
            src = wmh_root / subset / source
            for channel, name in enumerate(("FLAIR", "T1")):
                out = folder / f"images{suffix}" / f"{case}_{channel:04d}.nii.gz"
                original = next((src / "pre").glob(f"{name}.nii*"))
                if original.name.endswith(".gz"):
                    assert filecmp.cmp(original, out, shallow=False)
                array, geometry = read(out)
                array_in, geometry_in = read(original)
                assert np.array_equal(array, array_in) and array.dtype == array_in.dtype
                assert geometry == geometry_in
            wmh, wmh_geometry = read(src / "wmh.nii.gz")
            label, label_geometry = read(folder / f"labels{suffix}" / f"{case}.nii.gz")
            other, other_geometry = read(folder / f"otherPathology{suffix}" / f"{case}.nii.gz")
            assert label.dtype == other.dtype == np.uint8
            assert np.array_equal(label, (wmh == 1).astype(np.uint8))  # label 2 -> 0
            assert np.array_equal(other, (wmh == 2).astype(np.uint8))  # kept for the evaluation
            assert (wmh == 2).any() and label_geometry == other_geometry == wmh_geometry


def test_dataset_json_and_sources(converted):
    base, _, _ = converted
    folder = base / "raw" / DATASET
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "FLAIR", "1": "T1"}
    assert dataset["labels"] == {"background": 0, "WMH": 1}
    assert dataset["numTraining"] == 5 and dataset["numTest"] == 3 and dataset["file_ending"] == ".nii.gz"
    sources = json.loads((folder / "wmh2017_sources.json").read_text())
    assert sources["Amsterdam_GE1T5_137"] == {"subset": "Ts", "source": "test/Amsterdam/GE1T5/137"}
    assert sources["Utrecht_0"] == {"subset": "Tr", "source": "training/Utrecht/0"}


def test_paper_split(converted):
    base, _, proc = converted
    splits = json.loads((base / "preprocessed" / DATASET / "splits_final.json").read_text())
    test = json.loads((base / "preprocessed" / DATASET / "paper_test_cases.json").read_text())
    assert len(splits) == 1 and len(splits[0]["train"]) == 3 and len(splits[0]["val"]) == 1
    assert test["seed"] == 0 and len(test["test"]) == 1
    assert sorted(splits[0]["train"] + splits[0]["val"] + test["test"]) == sorted(TRAINING.values())
    assert "Paper split (seed 0)" in proc.stdout
    # 60 cases: five folds of 12, reproducible, seed-dependent
    ids = [f"case_{i:02d}" for i in range(60)]
    a, b, c = paper_split(ids, 3), paper_split(list(reversed(ids)), 3), paper_split(ids, 4)
    assert (len(a.train), len(a.val), len(a.test)) == (36, 12, 12)
    assert sorted(a.train + a.val + a.test) == ids and a == b and a.test != c.test


def test_nnunet_accepts_the_dataset(converted):
    base, env, _ = converted
    run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "--verify_dataset_integrity", "-np", "1",
         "-npfp", "1"], env)
    plans = json.loads((base / "preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    assert "2d" in plans["configurations"]
    assert (base / "preprocessed" / DATASET / "splits_final.json").is_file()  # planning keeps our split


def test_evaluation_with_the_kept_masks_equals_the_challenge_rule(wmh_root, converted, tmp_path):
    """labelsTs + otherPathologyTs with -exclude give the numbers of the original wmh.nii.gz with label 2."""
    base, env, _ = converted
    folder = base / "raw" / DATASET
    rng = np.random.default_rng(1)
    original, pred = tmp_path / "original", tmp_path / "pred"
    for source, case in TEST.items():
        src = wmh_root / "test" / source / "wmh.nii.gz"
        wmh = sitk.ReadImage(str(src))
        ref = sitk.GetArrayFromImage(wmh)
        guess = ((ref > 0) & (rng.random(ref.shape) < 0.7)) | (rng.random(ref.shape) < 0.05)
        image = sitk.GetImageFromArray(guess.astype(np.uint8))
        image.CopyInformation(wmh)
        write_to = pred / f"{case}.nii.gz"
        write_to.parent.mkdir(exist_ok=True)
        sitk.WriteImage(image, str(write_to))
        (original / f"{case}.nii.gz").parent.mkdir(exist_ok=True)
        (original / f"{case}.nii.gz").write_bytes(src.read_bytes())
    run(["nnunet_pdddpm_evaluate", "-ref", folder / "labelsTs", "-pred", pred, "-exclude",
         folder / "otherPathologyTs", "-l", "1", "-o", tmp_path / "converted.json"], env)
    run(["nnunet_pdddpm_evaluate", "-ref", original, "-pred", pred, "-exclude_label", "2", "-l", "1", "-o",
         tmp_path / "original.json"], env)
    got, expected = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("converted", "original"))
    assert [c["metrics"] for c in got["metric_per_case"]] == [c["metrics"] for c in expected["metric_per_case"]]
    run(["nnunet_pdddpm_evaluate", "-ref", folder / "labelsTs", "-pred", pred, "-l", "1", "-o",
         tmp_path / "plain.json"], env)
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["mean"]["1"]["dice"] < got["mean"]["1"]["dice"]  # predictions on label 2 no longer count


def assert_refused(proc, *words):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_refusals_leave_nothing_behind(wmh_root, tmp_path):
    env = nnunet_env(tmp_path)
    raw = tmp_path / "raw"
    bad = tmp_path / "not_wmh"
    (bad / "Utrecht" / "0").mkdir(parents=True)
    (bad / "Utrecht" / "0" / "FLAIR.nii.gz").write_bytes(b"")
    assert_refused(convert(bad, env, check=False), "No WMH 2017 case folder", "expected", "pre/FLAIR.nii.gz")
    assert_refused(convert(tmp_path / "missing", env, check=False), "not an existing folder")
    make_case(tmp_path / "outer" / "data" / "training" / "Utrecht" / "0", "Utrecht", np.random.default_rng(4))
    assert_refused(convert(tmp_path / "outer", env, check=False), "is not at <site>[/<scanner>]/<case>")
    no_raw = {k: v for k, v in env.items() if k != "nnUNet_raw"}
    assert_refused(convert(wmh_root, no_raw, check=False), "nnUNet_raw")
    assert not raw.exists() or not any(raw.iterdir())

    # one case whose T1 is on another grid: refused before anything is written
    shifted = tmp_path / "shifted"
    make_case(shifted / "training" / "Utrecht" / "0", "Utrecht", np.random.default_rng(2))
    make_case(shifted / "training" / "Utrecht" / "3", "Utrecht", np.random.default_rng(3))
    write_image(np.zeros((5, 16, 13), np.float32), "Utrecht", shifted / "training/Utrecht/3/pre/T1.nii.gz")
    assert_refused(convert(shifted, env, "--disable_progress_bar", check=False), "Utrecht_3", "sizes differ")
    # a wmh value outside 0/1/2, found while writing: the partial dataset is removed
    make_case(shifted / "training" / "Utrecht" / "3", "Utrecht", np.random.default_rng(3))
    write_image(np.full((5, 16, 14), 3, np.uint8), "Utrecht", shifted / "training/Utrecht/3/wmh.nii.gz")
    assert_refused(convert(shifted, env, "--disable_progress_bar", check=False), "Utrecht_3", "[3]")
    # a case folder without wmh.nii.gz
    (shifted / "training/Utrecht/3/wmh.nii.gz").unlink()
    assert_refused(convert(shifted, env, check=False), "training/Utrecht/3", "wmh.nii.gz")
    assert not raw.exists() or not any(raw.iterdir())

    # an existing dataset is never replaced silently; --overwrite replaces it completely
    (shifted / "training/Utrecht/3").rename(tmp_path / "set_aside")
    convert(shifted, env, "--disable_progress_bar")
    dataset = raw / DATASET
    before = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    assert_refused(convert(wmh_root, env, check=False), DATASET, "--overwrite")
    assert_refused(convert(wmh_root, env, "-n", "Other", "--overwrite", check=False), "already uses dataset id")
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == before == ["Utrecht_0_0000.nii.gz",
                                                                                 "Utrecht_0_0001.nii.gz"]
    assert_refused(convert(shifted, env, "-paper_split", "0", "--overwrite", check=False), "at least 5")
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == before
    convert(wmh_root, env, "--overwrite", "-paper_split", "1", "--disable_progress_bar")
    assert len(list((dataset / "imagesTr").iterdir())) == 2 * len(TRAINING)
    assert sorted(p.name for p in raw.iterdir()) == [DATASET]
    # the split is not replaced silently either
    (tmp_path / "raw" / DATASET).rename(tmp_path / "moved")
    assert_refused(convert(wmh_root, env, "-paper_split", "2", check=False), "splits_final.json", "--overwrite")
    assert not (raw / DATASET).exists()
