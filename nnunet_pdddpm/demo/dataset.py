"""A WMH-like demo dataset in nnU-Net v2 raw format, made offline from the MNI152 template in nilearn.

``make_demo_dataset`` writes ``Dataset{id:03d}_{name}/`` with ``imagesTr``/``labelsTr`` (training),
``imagesTs``/``labelsTs`` (test cases and their reference labels, for evaluation), channels
``_0000`` FLAIR and ``_0001`` T1, labels 0 background / 1 wmh (layout and rerun rules in
:mod:`nnunet_pdddpm.demo.layout`). Each case has its own random stream, so cases can be made in
any order or in parallel and still come out byte-identical.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import re
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_pdddpm.demo import layout
from nnunet_pdddpm.demo.subject import Grid, make_subject
from nnunet_pdddpm.errors import PDDDPMUserError

logger = logging.getLogger(__name__)

#: Bump when the generator's output changes, so that old folders are not taken for new ones.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class DemoProfile:
    """Size and acquisition of a demo dataset. Tuples are (x, y, z) = (right, anterior, superior) like ITK.

    ``field_of_view`` (mm) divided by the spacing gives the image size; ``centre`` is the MNI point (mm)
    the field of view is centred on; lesion loads are spread log-uniformly over ``lesion_load_ml``
    across all cases (training and test alike), so every split spans light to heavy lesion loads.
    """

    num_train: int
    num_test: int
    in_plane_spacing: float
    slice_thickness: float = 3.0
    field_of_view: tuple[float, float, float] = (180.0, 216.0, 180.0)
    centre: tuple[float, float, float] = (0.0, -18.0, 8.0)
    lesion_load_ml: tuple[float, float] = (0.5, 60.0)
    seed: int = 0
    name: str = "custom"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image size in voxels, (x, y, z)."""
        spacing = (self.in_plane_spacing, self.in_plane_spacing, self.slice_thickness)
        return tuple(max(1, round(f / s)) for f, s in zip(self.field_of_view, spacing))

    def grid(self) -> Grid:
        spacing = (self.slice_thickness, self.in_plane_spacing, self.in_plane_spacing)
        return Grid(self.shape[::-1], spacing, (self.centre[2], self.centre[1], self.centre[0]))

    def validate(self) -> None:
        """Raise :class:`PDDDPMUserError` for settings that cannot make a usable dataset."""
        if self.num_train < 1 or self.num_test < 0:
            raise PDDDPMUserError(f"Need num_train >= 1 and num_test >= 0, got {self.num_train} and {self.num_test}.")
        if not (0.25 <= self.in_plane_spacing <= 8 and 0.25 <= self.slice_thickness <= 10):
            raise PDDDPMUserError("Spacings must lie between 0.25 and 8 mm in-plane and 0.25 and 10 mm through-plane.")
        if not 0 < self.lesion_load_ml[0] <= self.lesion_load_ml[1]:
            raise PDDDPMUserError(f"lesion_load_ml must be (low, high), 0 < low <= high; got {self.lesion_load_ml}.")


PROFILES: dict[str, DemoProfile] = {
    # A 36 mm slab through the lateral ventricles, 50x60x12, seconds to plan and train on CPU. Pixels stay
    # finer than the 3 mm slices, or nnU-Net would transpose and run its 2d configuration on coronal slices;
    # the field of view clips the frontal and occipital poles a little. The slab holds about a third of the
    # white matter, hence the lower maximum load.
    "tiny": DemoProfile(6, 2, 2.9, 3.0, (145.0, 174.0, 36.0), (0.0, -17.0, 12.0), (0.5, 30.0), name="tiny"),
    # the demo's cpu profile: a 60 mm slab at 2.5 mm in-plane, 58x70x20
    "cpu": DemoProfile(16, 4, 2.5, 3.0, (145.0, 174.0, 60.0), (0.0, -17.0, 12.0), (0.5, 40.0), name="cpu"),
    "small": DemoProfile(20, 5, 2.0, name="small"),  # 90x108x60
    # the demo's gpu profile: 180x216x60, like the MICCAI WMH FLAIR scans
    "gpu": DemoProfile(40, 10, 1.0, name="gpu"),
}


def make_demo_dataset(
    output_folder: str | Path,
    profile: str | DemoProfile = "tiny",
    seed: int | None = None,
    dataset_id: int = 987,
    dataset_name: str = "PDDDPMDemo",
    num_processes: int = 1,
) -> Path:
    """Write the demo dataset into ``output_folder/Dataset{dataset_id:03d}_{dataset_name}`` and return that folder.

    ``profile``: a name in :data:`PROFILES` or a :class:`DemoProfile`; ``seed`` overrides its ``seed``.
    The same settings give byte-identical arrays, whatever ``num_processes`` (worker processes are
    spawned, so a calling script needs the usual ``if __name__ == "__main__"`` guard). A complete
    folder made with the same settings is left as it is; one made with other settings (or not by
    this function) raises :class:`PDDDPMUserError`.
    """
    prof = resolve_profile(profile, seed)
    check_dataset_id(dataset_id)
    check_dataset_name(dataset_name)
    root = check_output_folder(output_folder)
    folder = root / f"Dataset{dataset_id:03d}_{dataset_name}"
    layout.check_id_is_free(root, dataset_id, folder.name)
    settings = {"generator": __name__, "version": GENERATOR_VERSION, "profile": dataclasses.asdict(prof)}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back from disk
    cases = case_plan(prof)
    expected = [f for case_id, subset, _ in cases for f in layout.case_files(folder, case_id, subset)]
    if layout.claim(folder, settings, expected):
        logger.info("%s is complete with the same settings; not regenerating.", folder)
        return folder
    jobs = [(folder, prof.grid(), prof.seed, i, *case) for i, case in enumerate(cases)]
    progress = tqdm(total=len(jobs), desc=folder.name, unit="case")
    workers = max(1, min(num_processes, len(jobs)))
    if workers == 1:
        for job in jobs:
            _make_case(*job)
            progress.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_make_case, *zip(*jobs)):
                progress.update()
    progress.close()
    layout.write_dataset_json(folder, prof.num_train, prof.num_test)
    return folder


def _make_case(folder: Path, grid: Grid, seed: int, index: int, case_id: str, subset: str, load_ml: float) -> None:
    subject = make_subject(grid, load_ml, np.random.default_rng([seed, 1, index]))
    layout.write_case(folder, case_id, subset, subject)


def resolve_profile(profile: str | DemoProfile, seed: int | None = None) -> DemoProfile:
    """The :class:`DemoProfile` for a name or instance, with ``seed`` applied when given; validated."""
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise PDDDPMUserError(f"Unknown demo profile {profile!r}; choose one of {sorted(PROFILES)}.")
        profile = PROFILES[profile]
    if seed is not None:
        profile = dataclasses.replace(profile, seed=int(seed))
    profile.validate()
    return profile


def check_dataset_id(dataset_id: int) -> None:
    if not 1 <= int(dataset_id) <= 999:
        raise PDDDPMUserError(f"nnU-Net dataset ids run from 1 to 999, got {dataset_id}.")


def check_dataset_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise PDDDPMUserError(f"Dataset name {name!r} must be letters, digits, '_' or '-' (it becomes a folder name).")


def check_output_folder(output_folder: str | Path) -> Path:
    """Create ``output_folder`` if needed and make sure files can be written there; return it as a Path."""
    root = Path(output_folder).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise PDDDPMUserError(f"Cannot write to output folder {root} ({e.strerror}); pass a writable -o.") from None
    return root


def case_plan(profile: DemoProfile) -> list[tuple[str, str, float]]:
    """``(case_id, subset, lesion_load_ml)`` per case, training first; subset is ``"Tr"`` or ``"Ts"``.

    Loads are stratified on a log scale (one per equal-width bin, bins shuffled) so that even a
    handful of cases spans the whole range.
    """
    n = profile.num_train + profile.num_test
    rng = np.random.default_rng([profile.seed, 0])
    quantiles = (rng.permutation(n) + rng.uniform(size=n)) / n
    lo, hi = (math.log(v) for v in profile.lesion_load_ml)
    loads = np.exp(lo + quantiles * (hi - lo))
    return [(f"wmh_{i:03d}", "Tr" if i < profile.num_train else "Ts", float(loads[i])) for i in range(n)]
