"""``nnunet_pdddpm_evaluate`` end to end on small NIfTI files written with SimpleITK."""
import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_pdddpm.cli.evaluate import main
from nnunet_pdddpm.evaluation import (
    Geometry,
    avd,
    brier_score,
    dice,
    expected_calibration_error,
    hd95,
    jaccard,
    lesion_metrics,
    uncertainty_auroc,
)

SHAPE = (4, 10, 12)  # (z, y, x)
SPACING, ORIGIN = (1.2, 1.0, 3.0), (5.0, -2.0, 1.0)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def write(array, path, spacing=SPACING, origin=ORIGIN, direction=DIRECTION):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: array.ndim])
    image.SetOrigin(origin[: array.ndim])
    image.SetDirection(direction if array.ndim == 3 else (1.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path))


def make_cases(rng):
    """Three cases: lesions with an 'other pathology' region, an empty prediction, a perfect prediction."""
    ref_a = np.zeros(SHAPE, np.uint8)
    ref_a[1:3, 2:5, 2:5] = 1
    ref_a[2, 7:9, 8:11] = 1
    ref_a[0, 6:9, 0:3] = 2
    pred_a = np.zeros(SHAPE, np.uint8)
    pred_a[1:3, 3:6, 2:4] = 1
    pred_a[0, 6:8, 0:2] = 1  # inside label 2: removed by the WMH rule
    pred_a[3, 0:2, 10:12] = 1  # a false-positive lesion
    ref_b = np.zeros(SHAPE, np.uint8)
    ref_b[2, 4:6, 4:6] = 1
    ref_c = (rng.random(SHAPE) < 0.2).astype(np.uint8)
    return {"a": (ref_a, pred_a), "b": (ref_b, np.zeros(SHAPE, np.uint8)), "c": (ref_c, ref_c.copy())}


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    dirs = {name: tmp_path / name for name in ("ref", "pred", "unc", "prob")}
    for d in dirs.values():
        d.mkdir()
    cases = make_cases(rng)
    extra = {}
    for case, (ref, pred) in cases.items():
        write(ref, dirs["ref"] / f"{case}.nii.gz")
        write(pred, dirs["pred"] / f"{case}.nii.gz")
        fg = np.clip(0.8 * pred + 0.3 * rng.random(SHAPE), 0, 1).astype(np.float32)
        np.savez_compressed(dirs["prob"] / f"{case}.npz", probabilities=np.stack([1 - fg, fg]))
        unc = rng.random(SHAPE).astype(np.float32)
        write(unc, dirs["unc"] / f"{case}_uncertainty.nii.gz")
        extra[case] = (fg, unc)
    return dirs, cases, extra


def error_line(err: str) -> str:
    """The message printed by ``cli_entry`` (the last stderr line; a progress bar may precede it)."""
    return err.strip().splitlines()[-1]


def run(dirs, tmp_path, *flags):
    out = tmp_path / "out" / "summary.json"
    main(["-ref", str(dirs["ref"]), "-pred", str(dirs["pred"]), "-o", str(out), *flags])
    return json.loads(out.read_text()), out


def test_summary_json_and_csv(dataset, tmp_path, capsys):
    dirs, cases, extra = dataset
    summary, out = run(dirs, tmp_path, "-unc", str(dirs["unc"]), "-prob", str(dirs["prob"]), "-l", "1",
                       "-exclude_label", "2")
    assert summary["labels"] == [1] and summary["n_cases"] == 3 and summary["missing_cases"] == []
    geometry = Geometry(SPACING, ORIGIN, DIRECTION)
    per_case = {c["case"]: c["metrics"]["1"] for c in summary["metric_per_case"]}
    for case, (ref_labels, pred_labels) in cases.items():
        valid = ref_labels != 2
        ref, pred = ref_labels == 1, (pred_labels == 1) & valid
        fg, unc = extra[case]
        expected = {"dice": dice(ref, pred), "jaccard": jaccard(ref, pred), "hd95": hd95(ref, pred, geometry),
                    **lesion_metrics(ref, pred), "avd": avd(ref, pred),
                    "ece": expected_calibration_error(fg[valid], ref[valid]),
                    "brier": brier_score(fg[valid], ref[valid]),
                    "uncertainty_auroc": uncertainty_auroc(unc[valid], (ref != pred)[valid]),
                    "mean_uncertainty": float(unc[valid].mean())}
        assert per_case[case] == pytest.approx(expected, nan_ok=True, rel=1e-6)
    # the pathology region is excluded: case a's prediction there does not count
    assert per_case["a"]["lesion_precision"] == pytest.approx(0.5)
    assert math.isnan(per_case["b"]["hd95"]) and per_case["c"]["dice"] == 1.0
    assert summary["n_nan"]["1"]["hd95"] == 1 and summary["n_nan"]["1"]["dice"] == 0
    assert summary["mean"]["1"]["hd95"] == pytest.approx(np.nanmean([per_case[c]["hd95"] for c in "abc"]))
    assert summary["mean"]["1"]["dice"] == pytest.approx(np.mean([per_case[c]["dice"] for c in "abc"]))

    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["a", "b", "c"] and {r["label"] for r in rows} == {"1"}
    for row in rows:
        for name in summary["metric_names"]:
            assert float(row[name]) == pytest.approx(per_case[row["case"]][name], nan_ok=True)
    printed = capsys.readouterr().out
    assert "dice" in printed and "(1 NaN)" in printed


def test_without_exclusion_label_2_is_an_error_and_labels_are_discovered(dataset, tmp_path, capsys):
    dirs, _, _ = dataset
    with pytest.raises(SystemExit) as exc:
        run(dirs, tmp_path, "-l", "1")
    assert exc.value.code == 2 and "'a'" in capsys.readouterr().err
    summary, _ = run(dirs, tmp_path)  # no -l: every label found (1 and 2), each evaluated as binary
    assert summary["labels"] == [1, 2] and set(summary["mean"]) == {"1", "2"}
    assert "ece" not in summary["metric_names"]


def test_2d_and_float_prediction(tmp_path):
    """A float file holding whole numbers is a label map (soft maps are refused: see the contracts fuzz table)."""
    dirs = {name: tmp_path / name for name in ("ref", "pred")}
    for d in dirs.values():
        d.mkdir()
    ref = np.zeros((8, 9), np.uint8)
    ref[2:5, 3:6] = 1
    labels = np.zeros((8, 9), np.float32)
    labels[2:5, 4:7] = 1.0
    write(ref, dirs["ref"] / "x.nii.gz")
    write(labels, dirs["pred"] / "x.nii.gz")
    summary, _ = run(dirs, tmp_path, "-l", "1")
    pred = labels == 1
    assert summary["metric_per_case"][0]["metrics"]["1"]["dice"] == pytest.approx(dice(ref == 1, pred))
    assert summary["metric_per_case"][0]["metrics"]["1"]["hd95"] == pytest.approx(
        hd95(ref == 1, pred, Geometry((1.2, 1.0), (5.0, -2.0), (1.0, 0.0, 0.0, 1.0))))


def test_missing_case_errors_or_is_listed(dataset, tmp_path, capsys):
    dirs, _, _ = dataset
    (dirs["pred"] / "b.nii.gz").unlink()
    with pytest.raises(SystemExit) as exc:
        run(dirs, tmp_path, "-l", "1", "-exclude_label", "2")
    err = error_line(capsys.readouterr().err)
    assert exc.value.code == 2 and err.startswith("error:") and "b (b.nii.gz)" in err
    summary, _ = run(dirs, tmp_path, "-l", "1", "-exclude_label", "2", "--allow_missing")
    assert summary["missing_cases"] == ["b"] and summary["n_cases"] == 2


@pytest.mark.parametrize("problem", ["shape", "spacing", "origin", "direction", "labels"])
def test_bad_prediction_exits_2_naming_the_case(dataset, tmp_path, capsys, problem):
    dirs, cases, _ = dataset
    pred = cases["c"][1].copy()
    path = dirs["pred"] / "c.nii.gz"
    if problem == "shape":
        write(pred[:, :-1], path)
    elif problem == "spacing":
        write(pred, path, spacing=(1.2, 1.0, 2.0))
    elif problem == "origin":
        write(pred, path, origin=(5.0, -2.0, 1.5))
    elif problem == "direction":
        write(pred, path, direction=tuple(np.eye(3).ravel()))
    else:
        pred[0, 0, 0] = 3
        write(pred, path)
    with pytest.raises(SystemExit) as exc:
        run(dirs, tmp_path, "-l", "1", "-exclude_label", "2")
    err = error_line(capsys.readouterr().err)
    assert exc.value.code == 2 and err.startswith("error: Case 'c'")
    assert ("[3]" in err) if problem == "labels" else (problem if problem != "shape" else "size") in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_bad_paths_and_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-ref", str(tmp_path / "nope"), "-pred", str(tmp_path), "-o", str(tmp_path / "s.json")])
    assert exc.value.code == 2 and "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["-ref", str(tmp_path), "-pred", str(tmp_path), "-o", str(tmp_path / "s.txt")])
    assert exc.value.code == 2 and ".json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--allow_missing" in capsys.readouterr().out
