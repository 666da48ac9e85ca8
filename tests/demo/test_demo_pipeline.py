"""``nnunet_pdddpm_demo`` end to end on its tiny profile: real nnU-Net commands, a table, figures, and a fast rerun."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_pdddpm.checkpoints import load_checkpoint_safe
from nnunet_pdddpm.demo.pipeline import run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORK_STAGES = ("preprocessing", "training pre-segmenter", "training denoiser", "prediction pre-segmenter",
               "prediction diffusion")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "work"
    return workdir, run_demo(workdir, "tiny", "cpu", num_processes=1, num_figures=1)


def _overlap(workdir, folder) -> tuple[float, float]:
    """Mean Dice and Jaccard of a predictions folder against the demo's test labels, in NumPy (mean over cases of
    each foreground label, then over labels; a label absent from both is left out, as nnU-Net does)."""
    (labels_folder,) = (workdir / "nnUNet_raw").glob("*/labelsTs")
    foreground = [v for k, v in json.loads((labels_folder.parent / "dataset.json").read_text())["labels"].items()
                  if k != "background"]
    per_label = {label: ([], []) for label in foreground}
    for ref_file in sorted(labels_folder.glob("*.nii.gz")):
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_file)))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / ref_file.name)))
        for label in foreground:
            a, b = seg == label, ref == label
            if a.any() or b.any():
                per_label[label][0].append(2 * (a & b).sum() / (a.sum() + b.sum()))
                per_label[label][1].append((a & b).sum() / (a | b).sum())
    return (float(np.mean([np.mean(d) for d, _ in per_label.values()])),
            float(np.mean([np.mean(j) for _, j in per_label.values()])))


def test_table_has_both_methods_with_finite_scores(first_run):
    workdir, report = first_run
    def not_json(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    saved = json.loads((workdir / "report" / "results.json").read_text(), parse_constant=not_json)
    assert [row["dice"] for row in saved["rows"]] == [row["dice"] for row in report["rows"]]
    methods = [row["method"] for row in saved["rows"]]
    assert methods == ["pre-segmenter", "PD-DDPM"]  # the refiner samples from the pre-segmentation only
    for row, folder in zip(saved["rows"], ("pre_segmenter", "pd_ddpm")):
        dice, jaccard = _overlap(workdir, workdir / "predictions" / folder)
        assert row["dice"] == pytest.approx(dice, abs=1e-6) and row["jaccard"] == pytest.approx(jaccard, abs=1e-6)
        assert row["nfe_per_case"] > 0 and math.isfinite(row["seconds_per_case"])
    assert "ddim 2 steps" in saved["rows"][1]["sampling"] and "T'=10" in saved["rows"][1]["sampling"]
    assert "vanilla" not in saved["summary"] and "its pre-segmenter (Dice" in saved["summary"]
    denoiser = load_checkpoint_safe(f"{saved['denoiser']}/fold_0/checkpoint_final.pth")["pdddpm"]
    assert denoiser["training"]["warm_start_source"].endswith("nnUNetTrainer_tiny__nnUNetPlans__2d/fold_0/"
                                                              "checkpoint_final.pth")
    assert denoiser["sampling"]["soft_pre_segmentation"] is True
    assert (workdir / "report" / "results.csv").read_text().splitlines()[0].startswith("method,dice,hd95")
    stages = saved["stage_seconds_this_run"]
    assert all(stages[stage] > 0 for stage in WORK_STAGES)
    # the stages run one after another inside the run: together they fit in its wall time
    assert sum(v for v in stages.values() if v is not None) <= saved["wall_time_s"]


def test_figures_are_pngs(first_run):
    workdir, report = first_run
    figures = sorted((workdir / "report" / "figures").glob("*.png"))
    assert "metrics.png" in [f.name for f in figures] and len(figures) == 2  # the metrics bars + one case
    assert all(f.read_bytes()[:8] == PNG_SIGNATURE for f in figures)
    assert set(report["figures"]) == {str(f) for f in figures}


def test_second_run_reuses_every_finished_step(first_run):
    workdir, first = first_run
    second = run_demo(workdir, "tiny", "cpu", num_processes=1, num_figures=1)
    assert all(second["stage_seconds_this_run"][stage] is None for stage in WORK_STAGES)
    assert [r["dice"] for r in second["rows"]] == [r["dice"] for r in first["rows"]]
    # the pre-segmenter's cost is remembered from the run that predicted it
    assert second["rows"][0]["seconds_per_case"] == first["rows"][0]["seconds_per_case"]


def test_configuration_flag_reaches_the_pipeline(monkeypatch):
    """``-c 3d_fullres`` runs every stage with that configuration (the stages take it from the profile; the 3D
    commands themselves are exercised by tests/trainers/test_3d_multiclass.py)."""
    import nnunet_pdddpm.demo.pipeline as pipeline
    from nnunet_pdddpm.cli import demo

    seen = []
    monkeypatch.setattr(pipeline, "run_demo", lambda workdir, profile, *args: seen.append(profile))
    demo.main(["-profile", "tiny", "-c", "3d_fullres", "-device", "cpu", "-o", "unused"])
    assert seen[0].configuration == "3d_fullres" and seen[0].name == "tiny"


@pytest.mark.parametrize("flags, message", [(["-np", "0"], "-np must be at least 1, got 0."),
                                            (["-figures", "-1"], "-figures must be at least 0, got -1.")])
def test_bad_counts_are_refused_not_replaced_by_the_default(monkeypatch, capsys, flags, message):
    """``-np 0`` once fell through to the default worker count (0 is falsy); nothing runs for a refused flag."""
    import nnunet_pdddpm.demo.pipeline as pipeline
    from nnunet_pdddpm.cli import demo

    monkeypatch.setattr(pipeline, "run_demo", lambda *args: pytest.fail("the demo ran"))
    with pytest.raises(SystemExit) as exited:
        demo.main(["-profile", "tiny", "-device", "cpu", "-o", "unused", *flags])
    assert exited.value.code == 2 and capsys.readouterr().err.strip() == f"error: {message}"


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "nnunet_pdddpm.cli.demo", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--output", "-profile", "-c", "-device", "--num_processes", "-figures"):
        assert flag in out


@pytest.mark.parametrize("pd_dice, verdict, shown", [
    (0.8375, "matches", "+0.005"),  # below the spread between training seeds: no claim either way
    (0.8500, "improves on", "+0.017"),
    (0.8160, "falls below", "-0.017"),
    (0.8230, "falls below", "-0.010"),  # judged on the difference as printed
])
def test_summary_line_judges_the_printed_difference(pd_dice, verdict, shown):
    from nnunet_pdddpm.demo.pipeline import summary_line

    rows = [{"method": "pre-segmenter", "dice": 0.833, "lesion_f1": 0.9, "uncertainty_auroc": 0.99},
            {"method": "PD-DDPM", "dice": pd_dice, "lesion_f1": 0.9, "uncertainty_auroc": 0.95}]
    line = summary_line(rows, "the validation sweep")
    assert line.startswith(f"PD-DDPM {verdict} its pre-segmenter") and f", {shown};" in line
