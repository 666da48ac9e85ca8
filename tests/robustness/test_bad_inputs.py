"""Bad inputs a new user tried: each gets one ``error:`` sentence, before heavy work, and leaves no
output that looks complete. Most run the commands' ``main`` in-process (as the CLI tests do); a few run the
console scripts to see the real stderr."""
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATASET, DATASET_ID, nnunet_env

from nnunet_pdddpm.cli import evaluate, experiment, predict

MODELS = ["-d", str(DATASET_ID), "-c", "2d", "-tr", "PDDDPMTrainer_tiny", "-preseg_tr", "PDDDPMAttUNetTrainer_tiny",
          "-f", "0", "-device", "cpu"]
PREDICT = [*MODELS, "-npp", "1", "-nps", "1", "-t_prime", "10", "-ensemble_size", "2", "--disable_progress_bar"]
LOADED = "PD-DDPM with T'="  # printed once the denoiser is loaded


def one_error(err: str) -> str:
    """The single ``error:`` line of ``err``; no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def fails(main, argv, capsys, before_models=True) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    if before_models:
        assert LOADED not in out
    return one_error(err)


def fails_cli(script, argv, env) -> str:
    exe = Path(sys.executable).parent / script
    proc = subprocess.run([str(exe), *argv], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert LOADED not in proc.stdout
    return one_error(proc.stderr)


def nothing_complete(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.rglob("*") if p.name.endswith((".nii.gz", ".nii", ".json"))]


@pytest.fixture
def images(env, tmp_path) -> Path:
    """A copy of the two test images, to spoil."""
    folder = tmp_path / "images"
    shutil.copytree(env / "raw" / DATASET / "imagesTs", folder)
    return folder


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def rewrite(path: Path, change) -> None:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    out = sitk.GetImageFromArray(change(array))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


# ---------------------------------------------------------------- silent wrong results


def test_a_truncated_input_is_refused_before_models_load(env, images, tmp_path):
    cut_in_half(images / "case_008_0000.nii.gz")
    msg = fails_cli("nnunet_pdddpm_predict", ["-i", str(images), "-o", str(tmp_path / "o"), *PREDICT],
                    nnunet_env(env))
    assert "case_008_0000.nii.gz is incomplete: its compressed data ends early" in msg
    assert nothing_complete(tmp_path / "o")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_b_non_finite_voxels_are_refused(images, tmp_path, capsys, value):
    def spoil(a):
        a = a.astype(np.float32)
        a[3, 10, 10] = value
        return a

    rewrite(images / "case_009_0000.nii.gz", spoil)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(images / "case_009_0000.nii.gz")))).all()
    msg = fails(predict.main, ["-i", str(images), "-o", str(tmp_path / "o"), *PREDICT], capsys)
    assert "case_009_0000.nii.gz contains NaN or infinite voxels (1 of 14400)" in msg
    assert nothing_complete(tmp_path / "o")


@pytest.mark.parametrize("role", ["prediction", "reference"])
def test_c_truncated_files_are_refused_by_evaluate(env, tmp_path, role):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    shutil.copytree(env / "raw" / DATASET / "labelsTs", ref)
    shutil.copytree(ref, pred)
    cut_in_half((pred if role == "prediction" else ref) / "case_008.nii.gz")
    out = tmp_path / "eval" / "summary.json"
    msg = fails_cli("nnunet_pdddpm_evaluate", ["-ref", str(ref), "-pred", str(pred), "-o", str(out)],
                    nnunet_env(env))
    assert f"Case 'case_008': the {role} " in msg and "is incomplete" in msg
    assert nothing_complete(out.parent)


def test_c_nan_in_a_float_prediction_is_refused_by_evaluate(env, tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    shutil.copytree(env / "raw" / DATASET / "labelsTs", ref)
    shutil.copytree(ref, pred)

    def spoil(a):
        a = a.astype(np.float32)
        a[0, 0, 0] = np.nan
        return a

    rewrite(pred / "case_009.nii.gz", spoil)
    msg = fails(evaluate.main, ["-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "s.json")], capsys)
    assert "Case 'case_009': the prediction" in msg and "holds NaN or infinite values (1 of 14400 voxels)" in msg
    assert not (tmp_path / "s.json").exists()


# ---------------------------------------------------------------- tracebacks for user errors


def test_d_4d_channel_files_are_refused(images, tmp_path, capsys):
    f = images / "case_008_0000.nii.gz"
    image = nib.load(f)
    data = np.asanyarray(image.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), image.affine), f)
    msg = fails(predict.main, ["-i", str(images), "-o", str(tmp_path / "o"), *PREDICT], capsys)
    assert "case_008_0000.nii.gz is a 4D image" in msg and "one file per channel" in msg
    assert nothing_complete(tmp_path / "o")


@pytest.mark.parametrize("flag, target, message", [
    ("-o", "file", "is an existing file, not a folder"),
    ("-o", "file/sub", "which is a file, so the folder cannot be created"),
    ("-o_uncertainty", "file/unc", "which is a file, so the folder cannot be created"),
])
def test_e_output_folders_that_cannot_be_made(env, images, tmp_path, capsys, flag, target, message):
    (tmp_path / "file").write_text("a user's file")
    argv = ["-i", str(images), "-o", str(tmp_path / "o"), *PREDICT, flag, str(tmp_path / target)]
    msg = fails(predict.main, argv, capsys)
    assert msg.startswith(f"error: {flag} ") and message in msg
    assert (tmp_path / "file").read_text() == "a user's file"


def test_f_evaluate_output_under_a_file(env, tmp_path, capsys):
    labels = env / "raw" / DATASET / "labelsTs"
    (tmp_path / "file").write_text("x")
    msg = fails(evaluate.main, ["-ref", str(labels), "-pred", str(labels), "-o", str(tmp_path / "file" / "s.json")],
                capsys)
    assert "lies under" in msg and "which is a file" in msg


@pytest.mark.parametrize("main, extra", [(predict.main, PREDICT), (experiment.main, MODELS)])
def test_g_missing_results_variable_and_unknown_dataset(env, images, tmp_path, capsys, monkeypatch, main, extra):
    args = ["-i", str(images), "-o", str(tmp_path / "o")]
    if main is experiment.main:
        args = ["table1", *args, "-ref", str(env / "raw" / DATASET / "labelsTs")]
    bad_name = [*extra]
    bad_name[bad_name.index("-d") + 1] = "NoSuchName"
    assert "-d NoSuchName is neither a dataset ID" in fails(main, [*args, *bad_name], capsys)
    monkeypatch.delenv("nnUNet_results")
    assert "nnUNet_results is not set" in fails(main, [*args, *extra], capsys)
    assert nothing_complete(tmp_path / "o")


# ---------------------------------------------------------------- silently skipped input


@pytest.mark.parametrize("which", ["all", "one"])
def test_h_files_with_another_ending_are_named(images, tmp_path, capsys, which):
    for f in sorted(images.iterdir())[: None if which == "all" else 1]:
        sitk.WriteImage(sitk.ReadImage(str(f)), str(f)[: -len(".gz")])
        f.unlink()
    msg = fails(predict.main, ["-i", str(images), "-o", str(tmp_path / "o"), *PREDICT], capsys)
    expected = "case_008_0000.nii, case_009_0000.nii" if which == "all" else "case_008_0000.nii;"
    assert "do not end with the dataset's file ending '.nii.gz'" in msg and expected in msg
    assert nothing_complete(tmp_path / "o")


# ---------------------------------------------------------------- misleading messages


def test_j_zero_parts(images, tmp_path, capsys):
    msg = fails(predict.main, ["-i", str(images), "-o", str(tmp_path / "o"), *PREDICT, "-num_parts", "0"], capsys)
    assert msg == "error: -num_parts must be at least 1, got 0."


def test_k_evaluation_messages_print_plain_numbers(env, tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    shutil.copytree(env / "raw" / DATASET / "labelsTs", ref)
    pred.mkdir()
    image = sitk.ReadImage(str(ref / "case_008.nii.gz"))
    wide = sitk.Image(90, 36, 10, image.GetPixelID())
    wide.SetSpacing(image.GetSpacing())
    sitk.WriteImage(wide, str(pred / "case_008.nii.gz"))
    shutil.copy(ref / "case_009.nii.gz", pred)
    msg = fails(evaluate.main, ["-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "s.json")], capsys)
    assert "size (90, 36, 10) differs from the reference's (40, 36, 10)" in msg and "np." not in msg


def test_l_t_prime_values_above_T_name_values_before_any_work(env, tmp_path, capsys):
    raw = env / "raw" / DATASET
    argv = ["tprime", *MODELS, "-i", str(raw / "imagesTs"), "-ref", str(raw / "labelsTs"), "-o", str(tmp_path / "o"),
            "-values", "20", "2000"]
    msg = fails(experiment.main, argv, capsys, before_models=False)
    assert msg.startswith("error: -values 2000 exceed the largest T' of 1000") and "-t_prime" not in msg
    assert not (tmp_path / "o").exists()


def test_m_steps_above_t_prime_are_refused(images, tmp_path, capsys):
    msg = fails(predict.main, ["-i", str(images), "-o", str(tmp_path / "o"), *PREDICT, "-steps", "11"], capsys)
    assert msg == ("error: -steps 11 exceeds T'=10 (-t_prime): a reverse process from T' has only T' steps; use "
                   "-steps 10 or fewer.")


def test_m_steps_above_the_models_t_prime(env, images, tmp_path, capsys):
    """Without -t_prime, T' comes from the denoiser's validation sweep: checked once it is loaded."""
    argv = ["-i", str(images), "-o", str(tmp_path / "o"), *MODELS, "--disable_progress_bar", "-steps", "999"]
    msg = fails(predict.main, argv, capsys, before_models=False)
    assert "-steps 999 exceeds T'=" in msg and "(the validation sweep" in msg
    assert nothing_complete(tmp_path / "o")
    raw = env / "raw" / DATASET
    argv = ["tprime", *MODELS, "-i", str(raw / "imagesTs"), "-ref", str(raw / "labelsTs"), "-o", str(tmp_path / "e"),
            "-values", "0", "5", "20", "-steps", "6"]
    msg = fails(experiment.main, argv, capsys)
    assert msg == ("error: -steps 6 exceeds T'=5 (the smallest nonzero T' in -values): a reverse process from T' "
                   "has only T' steps; use -steps 5 or fewer.")
    assert not (tmp_path / "e").exists()
