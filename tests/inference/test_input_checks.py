import re

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.input_checks import check_case_files


def _write(path, array, spacing=(1.0, 1.0, 3.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing[: array.ndim])
    sitk.WriteImage(img, str(path))
    return str(path)


def _ok(shape=(4, 6, 5)):
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def check(files, n=1, ndim=3):
    check_case_files("c", files, n, ndim, ".nii.gz")


def test_good_case_passes(tmp_path):
    check([_write(tmp_path / "c_0000.nii.gz", _ok()), _write(tmp_path / "c_0001.nii.gz", _ok())], n=2)


@pytest.mark.parametrize("problem, message", [
    ("nan", "NaN or infinite voxels"),
    ("zero", "is empty (all voxels are zero)"),
    ("2d", "is a 2D image but the model's configuration is 3D"),
    ("grid", "The channels of case c are not on one grid: the size of c_0001.nii.gz is (6, 6, 4)"),
    ("count", "Case c has 1 channel files but the model expects 2"),
    ("garbage", "is not a readable image"),
    ("nan_nifti", "contains NaN or infinite voxels (2 of 120)"),
    ("truncated", "is incomplete: its compressed data ends early"),
    ("4d", "is a 4D image"),
])
def test_bad_cases_are_named_in_one_sentence(tmp_path, problem, message):
    a = _ok()
    if problem == "nan":
        a[1, 2, 3] = np.nan  # (ITK's NIfTI reader already drops non-finite values; MetaImage keeps them)
        files = [_write(tmp_path / "c_0000.mha", a)]
    elif problem == "zero":
        files = [_write(tmp_path / "c_0000.nii.gz", np.zeros_like(a))]
    elif problem == "2d":
        files = [_write(tmp_path / "c_0000.nii.gz", a[0])]
    elif problem == "grid":
        files = [_write(tmp_path / "c_0000.nii.gz", a), _write(tmp_path / "c_0001.nii.gz", _ok((4, 6, 6)))]
    elif problem == "count":
        files = [_write(tmp_path / "c_0000.nii.gz", a)]
    elif problem == "nan_nifti":  # SimpleITK reads these as 0: the raw data are checked
        a[1, 2, 3], a[2, 2, 2] = np.nan, -np.inf
        files = [_write(tmp_path / "c_0000.nii.gz", a)]
    elif problem == "truncated":
        files = [_write(tmp_path / "c_0000.nii.gz", _ok((20, 30, 40)))]
        data = open(files[0], "rb").read()
        open(files[0], "wb").write(data[: len(data) // 2])
    elif problem == "4d":
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.stack([a, a], -1), np.eye(4)), tmp_path / "c_0000.nii.gz")
        files = [str(tmp_path / "c_0000.nii.gz")]
    else:
        (tmp_path / "c_0000.nii.gz").write_bytes(b"not an image")
        files = [str(tmp_path / "c_0000.nii.gz")]
    n = 2 if problem in ("grid", "count") else 1
    with pytest.raises(PDDDPMUserError, match=re.escape(message)):
        check(files, n=n)


def test_files_that_nnunet_would_skip_are_named(tmp_path):
    from nnunet_pdddpm.inference.input_checks import input_cases

    dataset_json = {"file_ending": ".nii.gz", "channel_names": {"0": "FLAIR"}}
    _write(tmp_path / "a_0000.nii.gz", _ok())
    (tmp_path / "a_0000.json").write_text("{}")  # Tiff3DIO's spacing file: not an image
    assert input_cases(str(tmp_path), dataset_json) == {"a": [str(tmp_path / "a_0000.nii.gz")]}
    _write(tmp_path / "b_0000.nii", _ok())
    with pytest.raises(PDDDPMUserError, match=r"1 file\(s\) .* do not end with the dataset's file ending '.nii.gz' "
                                              r"\(dataset.json\) and would be skipped: b_0000.nii;"):
        input_cases(str(tmp_path), dataset_json)
    (tmp_path / "b_0000.nii").rename(tmp_path / "b.nii.gz")
    with pytest.raises(PDDDPMUserError, match="lack the 4-digit channel number: b.nii.gz"):
        input_cases(str(tmp_path), dataset_json)


def test_2d_images_are_fine_for_a_2d_configuration(tmp_path):
    check([_write(tmp_path / "c_0000.nii.gz", _ok()[0])], ndim=2)


def _model(dataset="Dataset001_A", labels=None, channels=None, spacing=(1.0, 1.0), transpose=(0, 1, 2)):
    from types import SimpleNamespace

    pm = SimpleNamespace(dataset_name=dataset, transpose_forward=list(transpose))
    cm = SimpleNamespace(spacing=list(spacing), normalization_schemes=["ZScoreNormalization"])
    dj = {"labels": labels or {"background": 0, "wmh": 1}, "channel_names": channels or {"0": "FLAIR"}}
    return pm, cm, dj


@pytest.mark.parametrize("other, problem", [
    (dict(dataset="Dataset002_B"), "dataset Dataset002_B vs Dataset001_A"),
    (dict(labels={"background": 0, "wmh": 1, "other": 2}), "labels"),
    (dict(channels={"0": "FLAIR", "1": "T1"}), "channels"),
    (dict(spacing=(1.0, 1.0, 3.0)), "target spacing"),
    (dict(transpose=(2, 0, 1)), "axis order"),
])
def test_pre_segmenter_from_another_model_is_refused(other, problem):
    from nnunet_pdddpm.inference.pre_segmentation import check_compatible

    check_compatible(*_model(), *_model(), "pre-segmentation model")  # identical: fine
    with pytest.raises(PDDDPMUserError, match=f"The pre-segmentation model does not match the denoiser .*{problem}"):
        check_compatible(*_model(), *_model(**other), "pre-segmentation model")
