"""``nnunet_pdddpm_evaluate -exclude``: the WMH challenge's label-2 rule from a separate mask folder.

Checked against a brute-force restatement of the challenge script (``WMH_METRICS.md``): the reference is
binarised as ``== 1`` (label-2 voxels become background), the prediction is set to background where the
reference is 2, and every metric is computed on these two masked binary images: loops for the in-plane
erosion and the physical coordinates, all pairwise distances, breadth-first 26-connected components.
"""
import itertools
import json
import math
from collections import deque

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_pdddpm.cli.evaluate import main

SHAPE = (5, 12, 14)  # (z, y, x)
SPACING, ORIGIN = (0.9, 1.1, 3.0), (-12.0, 4.5, 30.0)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
METRICS = ("dice", "jaccard", "hd95", "avd", "lesion_recall", "lesion_precision", "lesion_f1")


def write(array, path):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))


# ---- brute force, written from the challenge's description only --------------------------------------------------

def brute_boundary(mask):
    """Mask voxels with a background voxel inside the image among their 8 in-plane neighbours."""
    out = np.zeros(mask.shape, bool)
    nz, ny, nx = mask.shape
    for z, y, x in itertools.product(range(nz), range(ny), range(nx)):
        if mask[z, y, x]:
            for dy, dx in itertools.product((-1, 0, 1), repeat=2):
                yy, xx = y + dy, x + dx
                if 0 <= yy < ny and 0 <= xx < nx and not mask[z, yy, xx]:
                    out[z, y, x] = True
    return out


def file_geometry(path):
    """(spacing, origin, direction) as stored (NIfTI keeps float32, so not exactly SPACING etc.)."""
    image = sitk.ReadImage(str(path))
    return image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def brute_points(mask, geometry):
    spacing, origin, direction = (np.array(v, dtype=np.float64) for v in geometry)
    return np.array([origin + direction.reshape(3, 3) @ (spacing * np.array([x, y, z]))
                     for z, y, x in zip(*np.nonzero(mask))])


def brute_hd95(ref, pred, geometry):
    if not pred.any():
        return math.nan
    a, b = brute_points(brute_boundary(ref), geometry), brute_points(brute_boundary(pred), geometry)
    a_to_b = [min(np.linalg.norm(p - q) for q in b) for p in a]
    b_to_a = [min(np.linalg.norm(p - q) for q in a) for p in b]
    return max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))


def bfs_components(mask):
    seen, components = set(), []
    for start in zip(*np.nonzero(mask)):
        if start in seen:
            continue
        seen.add(start)
        queue, component = deque([start]), set()
        while queue:
            v = queue.popleft()
            component.add(v)
            for d in itertools.product((-1, 0, 1), repeat=3):
                w = tuple(int(i + j) for i, j in zip(v, d))
                if all(0 <= w[k] < mask.shape[k] for k in range(3)) and mask[w] and w not in seen:
                    seen.add(w)
                    queue.append(w)
        components.append(component)
    return components


def brute_detected(source, target):
    components = bfs_components(source)
    if not components:
        return 1.0
    return sum(any(target[v] for v in c) for c in components) / len(components)


def brute_metrics(reference_with_2, prediction, geometry):
    """The challenge's masking, then each metric on the two binary images."""
    ref = reference_with_2 == 1
    pred = (prediction == 1) & (reference_with_2 != 2)
    tp, n_ref, n_pred = int((ref & pred).sum()), int(ref.sum()), int(pred.sum())
    recall, precision = brute_detected(ref, pred), brute_detected(pred, ref)
    return {
        "dice": 2 * tp / (n_ref + n_pred),
        "jaccard": tp / (n_ref + n_pred - tp),
        "hd95": brute_hd95(ref, pred, geometry),
        "avd": abs(n_ref - n_pred) / n_ref * 100,
        "lesion_recall": recall,
        "lesion_precision": precision,
        "lesion_f1": 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision),
    }


# ---- cases ------------------------------------------------------------------------------------------------------

def make_cases():
    """Reference with label 2 and a prediction, per case; each case stresses one effect of the masking."""
    rng = np.random.default_rng(7)
    cases = {}
    # a predicted lesion cut in two by the excluded region (two components after masking), one lying
    # inside it only (no false positive after masking), and a reference lesion touching it
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:3, 2:5, 2:5] = 1
    ref[1:4, 6:9, 5:7] = 2
    ref[2, 6:9, 7:9] = 1
    pred = np.zeros(SHAPE, np.uint8)
    pred[1:3, 3:5, 2:5] = 1
    pred[2, 7, 3:11] = 1  # runs through the excluded block
    pred[3, 6:8, 5:7] = 1  # inside the excluded block only
    cases["split_and_hidden"] = (ref, pred)
    # the whole prediction lies in the excluded region: empty after masking, HD95 NaN
    ref = np.zeros(SHAPE, np.uint8)
    ref[2, 2:4, 2:4] = 1
    ref[0:2, 8:11, 9:13] = 2
    pred = np.zeros(SHAPE, np.uint8)
    pred[0:2, 8:10, 9:12] = 1
    cases["only_excluded"] = (ref, pred)
    # random blobs, with label 2 overwriting part of the lesions and of the prediction
    for i in range(3):
        ref = (rng.random(SHAPE) < 0.25).astype(np.uint8)
        ref[rng.random(SHAPE) < 0.15] = 2
        ref[2, 5, 5] = 1
        pred = (rng.random(SHAPE) < 0.25).astype(np.uint8)
        cases[f"random_{i}"] = (ref, pred)
    return cases


@pytest.fixture
def folders(tmp_path):
    dirs = {name: tmp_path / name for name in ("ref", "ref_with_2", "exclude", "pred")}
    for d in dirs.values():
        d.mkdir()
    cases = make_cases()
    for case, (ref_with_2, pred) in cases.items():
        write(np.where(ref_with_2 == 2, 0, ref_with_2), dirs["ref"] / f"{case}.nii.gz")
        write(ref_with_2 == 2, dirs["exclude"] / f"{case}.nii.gz")
        write(ref_with_2, dirs["ref_with_2"] / f"{case}.nii.gz")
        write(pred, dirs["pred"] / f"{case}.nii.gz")
    return dirs, cases


def evaluate(tmp_path, name, *flags):
    out = tmp_path / name / "summary.json"
    main([*flags, "-l", "1", "-o", str(out)])
    summary = json.loads(out.read_text())
    return {c["case"]: c["metrics"]["1"] for c in summary["metric_per_case"]}, summary


def assert_same(got, expected):
    for name in METRICS:
        if math.isnan(expected[name]):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-9), name


def test_exclude_folder_matches_brute_force_and_the_label_2_rule(folders, tmp_path):
    dirs, cases = folders
    got, summary = evaluate(tmp_path, "exclude", "-ref", str(dirs["ref"]), "-pred", str(dirs["pred"]),
                            "-exclude", str(dirs["exclude"]))
    for case, (ref_with_2, pred) in cases.items():
        assert_same(got[case], brute_metrics(ref_with_2, pred, file_geometry(dirs["ref"] / f"{case}.nii.gz")))
    assert summary["exclude_folder"] == str(dirs["exclude"])
    assert all(c["exclusion_file"].startswith(str(dirs["exclude"])) for c in summary["metric_per_case"])
    # the effects the cases were built for
    assert got["split_and_hidden"]["lesion_precision"] == pytest.approx(2 / 3)
    assert math.isnan(got["only_excluded"]["hd95"]) and got["only_excluded"]["avd"] == 100.0
    # identical to the single-file rule on the original references (label 2 inside the reference)
    same_file, _ = evaluate(tmp_path, "label2", "-ref", str(dirs["ref_with_2"]), "-pred", str(dirs["pred"]),
                            "-exclude_label", "2")
    for case in cases:
        assert_same(got[case], same_file[case])
    # and not what a plain evaluation gives: the exclusion changes the numbers
    plain, _ = evaluate(tmp_path, "plain", "-ref", str(dirs["ref"]), "-pred", str(dirs["pred"]))
    assert plain["split_and_hidden"]["lesion_precision"] != got["split_and_hidden"]["lesion_precision"]


def test_exclusion_also_removes_reference_voxels(tmp_path):
    """A mask over label-1 voxels (possible with a separate file) removes them from the reference too."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[2, 2:6, 2:6] = 1
    mask = np.zeros(SHAPE, np.uint8)
    mask[2, 2:6, 4:6] = 1
    pred = np.zeros(SHAPE, np.uint8)
    pred[2, 2:6, 2:4] = 1
    for name, array in (("ref", ref), ("exclude", mask), ("pred", pred)):
        (tmp_path / name).mkdir()
        write(array, tmp_path / name / "a.nii.gz")
    got, _ = evaluate(tmp_path, "out", "-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"),
                      "-exclude", str(tmp_path / "exclude"))
    geometry = file_geometry(tmp_path / "ref" / "a.nii.gz")
    assert_same(got["a"], brute_metrics(np.where(mask == 1, 2, ref), pred, geometry))
    assert got["a"]["dice"] == 1.0


def test_missing_or_misplaced_mask_is_one_error_line(folders, tmp_path, capsys):
    dirs, _ = folders
    (dirs["exclude"] / "random_0.nii.gz").unlink()
    args = ["-ref", str(dirs["ref"]), "-pred", str(dirs["pred"]), "-exclude", str(dirs["exclude"]), "-o",
            str(tmp_path / "o" / "s.json")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "random_0" in err
    image = sitk.ReadImage(str(dirs["ref"] / "random_0.nii.gz"))
    image.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(image, str(dirs["exclude"] / "random_0.nii.gz"))
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: Case 'random_0': the exclusion mask's origin")
    with pytest.raises(SystemExit):
        main([*args[:4], "-exclude", str(tmp_path / "nowhere"), *args[6:]])
    assert "-exclude" in capsys.readouterr().err
