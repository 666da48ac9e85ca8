"""The brain the demo subjects are made from: the MNI152 2009c template that ships inside nilearn.

nilearn carries the ICBM152 2009c symmetric T1 template and its grey/white-matter probability maps
as package data, so the demo needs no download. The files are read with SimpleITK straight from the
installed package (importing nilearn itself costs over a second and resamples on load).

Conventions used by the whole ``demo`` package: arrays are indexed ``(z, y, x)`` like
``SimpleITK.GetArrayFromImage``; "world" coordinates are RAS millimetres listed in the same
``(z, y, x)`` = (superior, anterior, right) order. The template's direction matrix is
``diag(-1, -1, 1)`` in ITK's LPS convention, i.e. its index axes run along R, A and S.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_pdddpm.errors import PDDDPMUserError

#: Channels of :attr:`BrainTemplate.maps`, in order.
MAP_NAMES = ("t1", "gm", "wm", "brain", "pv_distance")

#: Same file names as nilearn's ``MNI152_FILE_PATH`` and friends (``nilearn/datasets/struct.py``).
_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: T1 template value of white matter (median over wm > 0.5, template scaled to [0, 1]).
T1_WHITE_MATTER = 0.84

#: Lateral-ventricle CSF lies inside this box (world mm, (z, y, x) as (lo, hi)); sulcal CSF does not.
_VENTRICLE_BOX = ((-25.0, 45.0), (-75.0, 45.0), (-45.0, 45.0))
_MIN_VENTRICLE_ML = 2.0
#: Distances are clipped here; beyond it every voxel counts as "deep" white matter alike.
MAX_PV_DISTANCE_MM = 40.0


@dataclass(frozen=True)
class BrainTemplate:
    """Template maps on one grid.

    ``maps``: float32 ``(len(MAP_NAMES), Z, Y, X)``: T1 intensity in [0, 1], grey- and white-matter
    probabilities in [0, 1], a brain mask (0/1 at 1 mm, fractional when coarsened), and
    ``pv_distance``, the distance in mm to the lateral ventricles shrunk near the frontal and
    occipital horns, so that thresholding it draws the periventricular caps seen in real WMH.
    ``spacing``: ``(z, y, x)`` mm. ``world_of_first_voxel``: world mm of voxel ``(0, 0, 0)``.
    """

    maps: np.ndarray
    spacing: tuple[float, float, float]
    world_of_first_voxel: tuple[float, float, float]

    def channel(self, name: str) -> np.ndarray:
        return self.maps[MAP_NAMES.index(name)]


def template_folder() -> Path:
    """Folder of nilearn's packaged MNI152 files, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise PDDDPMUserError("The demo dataset is made from nilearn's MNI152 template: run `pip install nilearn`.")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [f for f in _FILES.values() if not (folder / f).is_file()]
    if missing:
        raise PDDDPMUserError(f"nilearn at {folder} lacks the MNI152 2009 files {missing}: install nilearn>=0.10.")
    return folder


@functools.lru_cache(maxsize=4)
def load_template(factor: int = 1) -> BrainTemplate:
    """The template coarsened by block averaging ``factor`` voxels per axis (anti-aliased for coarse grids).

    Cached per process: the 1 mm maps take about a second to derive.
    """
    base = _load_1mm()
    maps = np.stack([_block_mean(m, factor) for m in base.maps[:4]])
    ventricles = _block_mean(_ventricle_mask(base), factor) > 0.5
    spacing = tuple(s * factor for s in base.spacing)
    first = tuple(w + (factor - 1) / 2 * s for w, s in zip(base.world_of_first_voxel, base.spacing))
    pv = _periventricular_distance(ventricles, spacing, first)
    return BrainTemplate(np.concatenate([maps, pv[None]]).astype(np.float32), spacing, first)


@functools.lru_cache(maxsize=1)
def _load_1mm() -> BrainTemplate:
    folder = template_folder()
    images = {k: sitk.ReadImage(str(folder / f)) for k, f in _FILES.items()}
    ref = images["t1"]
    if not np.allclose(ref.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1)):
        raise RuntimeError(f"Unexpected MNI152 orientation {ref.GetDirection()} in {folder}.")
    arrays = {k: sitk.GetArrayFromImage(im).astype(np.float32) / 255.0 for k, im in images.items()}
    brain = (arrays["t1"] > 0).astype(np.float32)
    maps = np.stack([arrays["t1"], arrays["gm"], arrays["wm"], brain, np.zeros_like(brain)])
    ox, oy, oz = ref.GetOrigin()
    # LPS origin -> RAS world: x and y flip sign (direction diag(-1, -1, 1)).
    return BrainTemplate(maps, tuple(ref.GetSpacing()[::-1]), (oz, -oy, -ox))


def _ventricle_mask(base: BrainTemplate) -> np.ndarray:
    """Lateral (and third) ventricles: CSF components that lie wholly inside a central box."""
    brain, gm, wm = base.channel("brain"), base.channel("gm"), base.channel("wm")
    csf = np.clip(brain - gm - wm, 0, 1) > 0.5
    labels, _ = ndimage.label(csf)
    keep = np.zeros(labels.max() + 1, bool)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        lo = [w + s * d.start for w, s, d in zip(base.world_of_first_voxel, base.spacing, sl)]
        hi = [w + s * (d.stop - 1) for w, s, d in zip(base.world_of_first_voxel, base.spacing, sl)]
        inside = all(b[0] <= a and c <= b[1] for a, c, b in zip(lo, hi, _VENTRICLE_BOX))
        keep[i] = inside and (labels[sl] == i).sum() * np.prod(base.spacing) / 1000 >= _MIN_VENTRICLE_ML
    keep[0] = False
    if not keep.any():
        raise RuntimeError("No ventricles found in the MNI152 template; has nilearn's template changed?")
    return keep[labels].astype(np.float32)


def _periventricular_distance(ventricles: np.ndarray, spacing, first) -> np.ndarray:
    """Distance (mm) to the ventricles, divided by up to 2 at the horns' ends (caps reach further there)."""
    dist = ndimage.distance_transform_edt(~ventricles, sampling=spacing)
    y = first[1] + spacing[1] * np.arange(ventricles.shape[1])
    ys = y[np.any(ventricles, axis=(0, 2))]
    centre, half = (ys.max() + ys.min()) / 2, (ys.max() - ys.min()) / 2
    horn = np.clip(np.abs(y - centre) / half, 0, 1) ** 2
    return np.minimum(dist / (1 + horn[None, :, None]), MAX_PV_DISTANCE_MM).astype(np.float32)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    pad = [(0, (-s) % f) for s in a.shape]
    a = np.pad(a, pad)
    z, y, x = (s // f for s in a.shape)
    return a.reshape(z, f, y, f, x, f).mean(axis=(1, 3, 5))
