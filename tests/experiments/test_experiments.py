"""``nnunet_pdddpm_experiment``: each experiment on the tiny trained models, with sweeps small enough for CI."""
import csv
import json

import numpy as np
import pytest
from conftest import DATASET, DATASET_ID, model_folder

from nnunet_pdddpm.cli.experiment import main
from nnunet_pdddpm.experiments import ensemble, preseg_quality, table1, tprime

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def common(trained, nnunet_folders):
    raw = trained / "raw" / DATASET
    return ["-d", str(DATASET_ID), "-c", "2d", "-tr", "PDDDPMTrainer_tiny", "-preseg_tr", "PDDDPMAttUNetTrainer_tiny",
            "-f", "0", "-i", str(raw / "imagesTs"), "-ref", str(raw / "labelsTs"), "-device", "cpu",
            "--disable_tta", "-sampler", "ddim", "-steps", "2"]


@pytest.fixture
def nnunet_folders(trained, monkeypatch):
    for name, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        monkeypatch.setenv(name, str(trained / sub))


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def check_outputs(out, name, columns, n_rows):
    header, rows = read_csv(out / f"{name}.csv")
    assert tuple(header) == tuple(columns)
    assert len(rows) == n_rows
    assert (out / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    saved = json.loads((out / f"{name}.json").read_text())
    assert len(saved["rows"]) == n_rows
    return rows, saved


def in_unit_interval(value):
    return 0.0 <= float(value) <= 1.0


def test_table1_compares_three_methods(common, trained, tmp_path):
    main(["table1", *common, "-o", str(tmp_path), "-ensemble_size", "2", "-vanilla_steps", "3"])
    rows, _ = check_outputs(tmp_path, "table1", table1.COLUMNS, 3)
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"pre-segmenter", "vanilla DDPM", "PD-DDPM"}
    for row in rows:
        assert in_unit_interval(row["dice"]) and in_unit_interval(row["jaccard"])
    pre, vanilla, pd = by_method["pre-segmenter"], by_method["vanilla DDPM"], by_method["PD-DDPM"]
    # PD-DDPM = one pre-segmentation + ensemble x steps denoiser calls per patch; vanilla = ensemble x 3 steps
    denoiser_nfe = float(pd["nfe_per_case"]) - float(pre["nfe_per_case"])
    assert float(pre["nfe_per_case"]) > 0 and denoiser_nfe > 0
    assert float(vanilla["nfe_per_case"]) == pytest.approx(denoiser_nfe * 3 / 2)
    # without -t_prime, the T' the denoiser's final validation chose (its sweep file), as nnunet_pdddpm_predict
    sweep = json.loads((model_folder(trained, "PDDDPMTrainer_tiny") / "fold_0" / "pdddpm_t_prime.json").read_text())
    assert "ddim 3 steps" in vanilla["sampling"] and f"T'={sweep['t_prime']}," in pd["sampling"]
    for folder in ("pre_segmenter", "vanilla_ddpm", "pd_ddpm"):
        assert len(list((tmp_path / "predictions" / folder).glob("*.nii.gz"))) == 2


def test_tprime_zero_reproduces_the_pre_segmenter(common, tmp_path):
    main(["tprime", *common, "-o", str(tmp_path), "-values", "20", "0", "-ensemble_size", "2"])
    rows, saved = check_outputs(tmp_path, "tprime", tprime.COLUMNS, 2)
    assert [int(r["t_prime"]) for r in rows] == [0, 20]
    zero, twenty = rows
    # T'=0: no reverse step, the ensemble is the hard pre-segmentation itself
    assert float(zero["dice"]) == saved["pre_segmenter"]["dice"]
    assert float(zero["mean_uncertainty"]) == 0.0
    assert float(twenty["mean_uncertainty"]) > 0.0  # two members from independent noise disagree somewhere
    assert float(twenty["nfe_per_case"]) > float(zero["nfe_per_case"])


def test_ensemble_reuses_samples_across_sizes(common, tmp_path):
    main(["ensemble", *common, "-o", str(tmp_path), "-values", "1", "2", "-repeats", "2"])
    rows, _ = check_outputs(tmp_path, "ensemble", ensemble.COLUMNS, 2)
    for row in rows:
        dice = [float(d) for d in row["dice_per_repeat"].split(";")]
        assert len(dice) == 2 and all(in_unit_interval(d) for d in dice)
        assert float(row["dice_min"]) <= float(row["dice_mean"]) <= float(row["dice_max"])
        assert float(row["dice_std"]) == pytest.approx(np.std(dice), abs=1e-5)  # the repeats' spread
        assert float(row["dice_mean"]) == pytest.approx(np.mean(dice), abs=1e-5)
    one, two = (float(r["nfe_per_case"]) for r in rows)
    assert two > one  # one more member per case; the pre-segmentation is counted once
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == [
        "ensemble_01_repeat_0", "ensemble_01_repeat_1", "ensemble_02_repeat_0", "ensemble_02_repeat_1"]
    # members are drawn one at a time, so none is mirrored, and the written settings say so
    assert json.loads((tmp_path / "ensemble.json").read_text())["settings"]["mirrored_members"] is False


def test_ensemble_refuses_mirrored_members_before_any_work(common, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ensemble", *common, "-o", str(tmp_path / "out"), "-values", "1", "--mirrored_members"])
    assert exit_info.value.code == 2
    assert "cannot mirror them; drop --mirrored_members" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_preseg_quality_includes_the_zero_pre_segmentation(common, tmp_path):
    main(["preseg_quality", *common, "-o", str(tmp_path), "-ensemble_size", "2", "-degradations", "zero", "dilate:1"])
    rows, _ = check_outputs(tmp_path, "preseg_quality", preseg_quality.COLUMNS, 3)
    names = [r["pre_segmentation"] for r in rows]
    assert sorted(names) == ["dilate 1", "pre-segmenter", "zero"]
    pre_dice = [float(r["pre_segmentation_dice"]) for r in rows]
    assert pre_dice == sorted(pre_dice)
    zero = rows[names.index("zero")]
    assert float(zero["pre_segmentation_dice"]) == 0.0
    assert all(in_unit_interval(r["dice"]) for r in rows)


@pytest.mark.parametrize("args, message", [
    (["tprime", "-values", "-5"], "-values"),
    (["preseg_quality", "-degradations", "blur:2"], "Unknown degradation"),
    (["ensemble", "-repeats", "0"], "-repeats"),
])
def test_bad_arguments_are_one_sentence(tmp_path, capsys, args, message):
    paths = ["-d", "1", "-c", "2d", "-i", str(tmp_path / "in"), "-ref", str(tmp_path / "ref"), "-o", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args[:1], *paths, *args[1:]])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("lesion_f1", [0.93, 1.0])
def test_metrics_figure_legend_hides_no_bar(tmp_path, monkeypatch, lesion_f1):
    """The demo's metrics figure once drew its legend over the PD-DDPM lesion F1 bar (values near 1 fill the axes)."""
    drawn = []

    def keep(fig, path):
        fig.tight_layout()
        fig.canvas.draw()
        drawn.append(fig)
        return path

    monkeypatch.setattr(table1, "save_figure", keep)
    rows = [{"method": m, "dice": 0.83, "jaccard": 0.72, "lesion_f1": lesion_f1, "hd95": 3.4}
            for m in ("pre-segmenter", "PD-DDPM")]
    table1.plot(rows, tmp_path / "metrics.png")
    ax = drawn[0].axes[0]
    legend = ax.get_legend().get_window_extent()
    bars = [bar.get_window_extent() for bar in ax.patches]
    assert len(bars) == 6 and not any(legend.overlaps(bar) for bar in bars)
