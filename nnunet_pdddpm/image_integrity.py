"""Read an image file's voxels as stored, to find what SimpleITK hides: truncated files and NaN/inf voxels.

SimpleITK 2.5 (ITK's NIfTI reader) fills the missing part of a truncated ``.nii.gz`` with zeros and reads
NaN and ±inf float voxels as 0, without a warning, so checks on its arrays never fire. For NIfTI-1/2
files (``.nii``, ``.nii.gz``) :func:`scan_voxels` therefore decompresses the file itself, to the end of
the gzip stream (which also checks the gzip CRC), counts the data bytes against the header's promise and
tests the raw values; all in one streaming pass. Other formats are read with SimpleITK, whose readers
for them keep non-finite values and raise on short files.
"""
from __future__ import annotations

import gzip
import io
import os
import zlib
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.io_utils import IncompleteWriteError

__all__ = ["IncompleteImageError", "VoxelScan", "grid_difference", "image_file_problem", "read_image_header",
           "scan_voxels", "verify_written_image"]

_CHUNK_BYTES = 1 << 24
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_HEADER_SIZES = (348, 540)  # NIfTI-1, NIfTI-2

# NIfTI stores geometry as float32; larger differences mean a different grid, not rounding. For origins
# around 100 mm this is nnU-Net's own tolerance (np.allclose: 1e-8 + 1e-5 * |value|), which warns about
# channels whose origin or direction differ and then predicts them on the first channel's grid.
SPACING_ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


class IncompleteImageError(Exception):
    """The file holds fewer data than its header promises, or its compressed stream is damaged.

    The message is a clause for the caller's sentence, e.g. ``"it ends before the 14400 voxels its header
    promises"``.
    """


@dataclass(frozen=True)
class VoxelScan:
    """What one pass over a file's voxels found (after NIfTI's scl_slope/scl_inter for ``any_nonzero``,
    ``minimum`` and ``maximum``, which are over the finite values; None for compound types or no finite value)."""

    n_voxels: int
    n_non_finite: int
    any_nonzero: bool
    minimum: float | None = None
    maximum: float | None = None


def scan_voxels(path: str) -> VoxelScan:
    """Read every voxel of ``path`` once; raise :class:`IncompleteImageError` for a truncated or damaged file.

    A file SimpleITK cannot read at all raises SimpleITK's ``RuntimeError``.
    """
    with open(path, "rb") as f:
        compressed = f.read(2) == _GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            header = _read_nifti_header(f)
            if header is None:
                return _scan_with_simpleitk(path)
            scan = _scan_nifti_payload(f, header)
            if compressed:
                while f.read(_CHUNK_BYTES):  # the gzip trailer (CRC, length) is checked only at the end
                    pass
            return scan
    except EOFError:
        raise IncompleteImageError("its compressed data ends early (the file was cut short)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise IncompleteImageError(f"its compressed data is damaged ({e})") from None


def _read_nifti_header(f) -> "object | None":
    """nibabel's header of a single-file NIfTI-1/2 stream positioned at 0, read without the data; else None."""
    import nibabel as nib

    start = f.read(4)
    if len(start) < 4:
        return None
    sizes = {int.from_bytes(start, "little"), int.from_bytes(start, "big")}
    size = next((s for s in _NIFTI_HEADER_SIZES if s in sizes), None)
    if size is None:
        return None
    block = start + f.read(size - 4)
    if len(block) < size:
        raise IncompleteImageError("it ends inside its header")
    header_class = nib.Nifti1Header if size == 348 else nib.Nifti2Header
    try:
        header = header_class.from_fileobj(io.BytesIO(block), check=False)
    except Exception:  # nibabel refuses it: let SimpleITK decide what the file is
        return None
    if bytes(header["magic"]).rstrip(b"\0") not in (b"n+1", b"n+2"):
        return None  # a .hdr/.img pair: the data are in another file
    return header


def _scan_nifti_payload(f, header) -> VoxelScan:
    dtype = header.get_data_dtype()
    n_voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
    offset = max(int(header.get_data_offset()), header.sizeof_hdr + 4)
    skip = offset - header.sizeof_hdr
    if len(f.read(skip)) < skip:
        raise IncompleteImageError(f"it ends before the {n_voxels} voxels its header promises")
    slope, inter = header.get_slope_inter()
    remaining = n_voxels * dtype.itemsize
    chunk = max(dtype.itemsize, _CHUNK_BYTES // dtype.itemsize * dtype.itemsize)
    n_non_finite, any_nonzero = 0, False
    low, high = None, None
    while remaining > 0:
        data = f.read(min(chunk, remaining))
        if len(data) < min(chunk, remaining):
            raise IncompleteImageError(f"it ends before the {n_voxels} voxels its header promises")
        remaining -= len(data)
        if dtype.fields is not None:  # RGB and other compound types: no numbers to test
            any_nonzero = any_nonzero or any(data)
            continue
        values = np.frombuffer(data, dtype)
        if np.issubdtype(dtype, np.inexact):
            finite = np.isfinite(values)
            n_non_finite += int(values.size - np.count_nonzero(finite))
            if n_non_finite:
                values = values[finite]
        if not any_nonzero:
            if inter:  # scl_inter shifts stored zeros away from zero
                any_nonzero = bool(np.any(values.astype(np.float64) * (slope or 1.0) + inter != 0))
            else:
                any_nonzero = bool(np.any(values))
        if values.size:
            ends = np.array([values.min(), values.max()], np.float64) * (slope or 1.0) + (inter or 0.0)
            low = float(ends.min()) if low is None else min(low, float(ends.min()))  # a negative slope swaps them
            high = float(ends.max()) if high is None else max(high, float(ends.max()))
    return VoxelScan(n_voxels, n_non_finite, any_nonzero, low, high)


def _scan_with_simpleitk(path: str) -> VoxelScan:
    image = sitk.ReadImage(path)  # keep a reference: the view below borrows its buffer
    array = sitk.GetArrayViewFromImage(image)
    n_non_finite = 0
    values = array
    if np.issubdtype(array.dtype, np.inexact):
        finite = np.isfinite(array)
        n_non_finite = int(array.size - np.count_nonzero(finite))
        values = array[finite] if n_non_finite else array
    if not values.size or not np.issubdtype(values.dtype, np.number):
        return VoxelScan(int(array.size), n_non_finite, bool(array.any()))
    return VoxelScan(int(array.size), n_non_finite, bool(array.any()), float(values.min()), float(values.max()))


def read_image_header(path: str | os.PathLike) -> sitk.ImageFileReader:
    """A reader holding ``path``'s header (size, spacing, origin, direction, dimension), voxels not read.

    An unreadable file is a user error naming the file and SimpleITK's last line (the reason, without its
    C++ trace); the evaluation and the dataset converter (``datasets/wmh2017.py``) check their inputs with it.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise PDDDPMUserError(f"Cannot read {path} as an image: {str(e).strip().splitlines()[-1]}") from None
    return reader


def grid_difference(a: sitk.ImageFileReader | sitk.Image,
                    b: sitk.ImageFileReader | sitk.Image) -> tuple[str, tuple, tuple] | None:
    """The first of size, spacing, origin, direction in which ``b`` is not on ``a``'s grid, as (name, b's value,
    a's value), or None (tolerances: :data:`SPACING_ORIGIN_ATOL_MM`, :data:`DIRECTION_ATOL`)."""
    checks = (("size", a.GetSize(), b.GetSize(), 0.0),
              ("spacing", a.GetSpacing(), b.GetSpacing(), SPACING_ORIGIN_ATOL_MM),
              ("origin", a.GetOrigin(), b.GetOrigin(), SPACING_ORIGIN_ATOL_MM),
              ("direction", a.GetDirection(), b.GetDirection(), DIRECTION_ATOL))
    for name, a_value, b_value, atol in checks:
        if len(a_value) != len(b_value) or not np.allclose(a_value, b_value, rtol=0, atol=atol):
            return name, _rounded(b_value), _rounded(a_value)
    return None


def _rounded(values) -> tuple:
    """Plain Python numbers for messages (numpy 2 would print ``np.int64(90)``)."""
    return tuple(round(v, 4) for v in values)  # SimpleITK gives Python ints (size) and floats


def image_file_problem(path: str | os.PathLike, like: sitk.ImageFileReader | None = None) -> str | None:
    """Why ``path`` is not a complete image (on ``like``'s grid, when given), as a clause; None when it is.

    Used to decide whether an existing output can be kept: missing, unreadable, cut short or damaged, or on
    another grid than the image it was predicted for.
    """
    path = str(path)
    if not os.path.isfile(path):
        return "it is missing"
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return "it is not a readable image"
    if like is not None:
        difference = grid_difference(like, reader)
        if difference is not None:
            name, value, expected = difference
            return f"its {name} {value} differs from the input's {expected}"
    try:
        scan_voxels(path)
    except IncompleteImageError as e:
        return str(e)
    except RuntimeError:
        return "it is not a readable image"
    return None


def verify_written_image(path: str, size: tuple[int, ...]) -> None:
    """Read a just-written image back: header readable, ``size`` (SimpleITK's x, y[, z] order), every voxel
    present. Raises :class:`~nnunet_pdddpm.io_utils.IncompleteWriteError` (``verify`` of ``atomic_path``)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
        scan_voxels(path)
    except IncompleteImageError as e:
        raise IncompleteWriteError(str(e)) from None
    except RuntimeError as e:
        raise IncompleteWriteError(f"it cannot be read as an image: {str(e).strip().splitlines()[-1]}") from None
    if tuple(reader.GetSize()) != tuple(size):
        raise IncompleteWriteError(f"its size {reader.GetSize()} is not the {tuple(size)} written")
