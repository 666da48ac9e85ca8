"""``scan_voxels`` sees what SimpleITK hides: truncated files, damaged gzip streams, NaN/inf voxels."""
import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_pdddpm.image_integrity import IncompleteImageError, scan_voxels


def _image(shape=(6, 7, 8), dtype=np.float32):
    return np.random.default_rng(0).normal(size=shape).astype(dtype)


def _write(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return str(path)


def _cut(path, fraction=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii"])
def test_complete_nifti_is_scanned_without_surprises(tmp_path, name):
    scan = scan_voxels(_write(tmp_path / name, _image()))
    assert scan.n_voxels == 6 * 7 * 8 and scan.n_non_finite == 0 and scan.any_nonzero


@pytest.mark.parametrize("name, message", [("a.nii.gz", "compressed data ends early"),
                                           ("a.nii", "ends before the 336 voxels its header promises")])
def test_truncated_nifti_is_refused_though_simpleitk_reads_it(tmp_path, name, message):
    path = _cut(_write(tmp_path / name, _image()))
    if name.endswith(".gz"):
        sitk.ReadImage(path)  # the reason for this module: no error, the missing half reads as zeros
    with pytest.raises(IncompleteImageError, match=message):
        scan_voxels(path)


def test_damaged_gzip_stream_is_refused(tmp_path):
    path = _write(tmp_path / "a.nii.gz", _image((20, 30, 40)))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(IncompleteImageError, match="damaged"):
        scan_voxels(path)


def test_non_finite_voxels_are_counted_where_simpleitk_reads_zeros(tmp_path):
    array = _image()
    array[1, 2, 3], array[2, 2, 2], array[3, 3, 3] = np.nan, np.inf, -np.inf
    path = _write(tmp_path / "a.nii.gz", array)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(path))).all()
    assert scan_voxels(path).n_non_finite == 3


def test_scaling_and_other_formats(tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    image.header.set_slope_inter(1.0, 5.0)  # stored zeros, but every voxel is 5
    nib.save(image, tmp_path / "inter.nii.gz")
    assert scan_voxels(str(tmp_path / "inter.nii.gz")).any_nonzero
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), tmp_path / "zero.nii.gz")
    assert not scan_voxels(str(tmp_path / "zero.nii.gz")).any_nonzero
    nib.save(nib.Nifti2Image(_image(), np.eye(4)), tmp_path / "two.nii.gz")
    assert scan_voxels(str(tmp_path / "two.nii.gz")).n_voxels == 336
    array = _image()
    array[0, 0, 0] = np.nan
    assert scan_voxels(_write(tmp_path / "a.mha", array)).n_non_finite == 1  # read by SimpleITK
    with gzip.open(tmp_path / "junk.nii.gz", "wb") as f:
        f.write(b"not an image at all")
    with pytest.raises(RuntimeError):
        scan_voxels(str(tmp_path / "junk.nii.gz"))


def test_value_range_after_scaling_and_without_non_finite_values(tmp_path):
    image = nib.Nifti1Image(np.array([[[0, 3], [-2, 7]]], np.int16), np.eye(4))
    image.header.set_slope_inter(-2.0, 1.0)  # a negative slope swaps the ends: 1 - 2 * 7 = -13, 1 - 2 * -2 = 5
    nib.save(image, tmp_path / "scaled.nii.gz")
    scan = scan_voxels(str(tmp_path / "scaled.nii.gz"))
    assert (scan.minimum, scan.maximum) == (-13.0, 5.0)
    array = _image()
    array[1, 1, 1], array[2, 2, 2] = np.nan, 1e30
    scan = scan_voxels(_write(tmp_path / "big.nii.gz", array))
    assert scan.maximum == pytest.approx(1e30, rel=1e-6) and scan.n_non_finite == 1
