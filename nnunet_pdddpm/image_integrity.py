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

__all__ = ["IncompleteImageError", "VoxelScan", "read_image_header", "scan_voxels"]

_CHUNK_BYTES = 1 << 24
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_HEADER_SIZES = (348, 540)  # NIfTI-1, NIfTI-2


class IncompleteImageError(Exception):
    """The file holds fewer data than its header promises, or its compressed stream is damaged.

    The message is a clause for the caller's sentence, e.g. ``"it ends before the 14400 voxels its header
    promises"``.
    """


@dataclass(frozen=True)
class VoxelScan:
    """What one pass over a file's voxels found (after NIfTI's scl_slope/scl_inter for ``any_nonzero``)."""

    n_voxels: int
    n_non_finite: int
    any_nonzero: bool


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
            n_non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
        if not any_nonzero:
            if inter:  # scl_inter shifts stored zeros away from zero
                any_nonzero = bool(np.any(values.astype(np.float64) * (slope or 1.0) + inter != 0))
            else:
                any_nonzero = bool(np.any(values))
    return VoxelScan(n_voxels, n_non_finite, any_nonzero)


def _scan_with_simpleitk(path: str) -> VoxelScan:
    image = sitk.ReadImage(path)  # keep a reference: the view below borrows its buffer
    array = sitk.GetArrayViewFromImage(image)
    n_non_finite = 0
    if np.issubdtype(array.dtype, np.inexact):
        n_non_finite = int(array.size - np.count_nonzero(np.isfinite(array)))
    return VoxelScan(int(array.size), n_non_finite, bool(array.any()))


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
