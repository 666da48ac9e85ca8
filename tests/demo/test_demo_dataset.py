"""The synthetic WMH demo dataset: nnU-Net layout, geometry, lesions, determinism, rerun behaviour, CLI."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_pdddpm.cli.make_demo_dataset import main
from nnunet_pdddpm.demo import PROFILES, DemoProfile, make_demo_dataset
from nnunet_pdddpm.errors import PDDDPMUserError

TINY = PROFILES["tiny"]
# Two cases are enough where only the bytes matter.
TWO_CASES = dataclasses.replace(TINY, num_train=2, num_test=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("raw"), "tiny", seed=0)


def _cases(folder: Path) -> list[tuple[str, str]]:
    return [(p.name[:-7], sub) for sub in ("Tr", "Ts") for p in sorted((folder / f"labels{sub}").iterdir())]


def _read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: _read(p)[1] for p in sorted(folder.glob("*/*.nii.gz"))}


def test_layout_channels_and_dataset_json(dataset: Path):
    assert dataset.name == "Dataset987_PDDDPMDemo"
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1"}
    assert meta["labels"] == {"background": 0, "wmh": 1}
    assert meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == TINY.num_train
    for sub, n in (("Tr", TINY.num_train), ("Ts", TINY.num_test)):
        images = sorted(p.name for p in (dataset / f"images{sub}").iterdir())
        labels = sorted(p.name for p in (dataset / f"labels{sub}").iterdir())
        assert len(labels) == n and len(images) == 2 * n
        assert images == sorted(f"{lab[:-7]}_{c:04d}.nii.gz" for lab in labels for c in (0, 1))
    assert not list(dataset.rglob(".*"))  # no temporary files left behind


def test_geometry_is_3mm_axial_and_shared_by_channels_and_labels(dataset: Path):
    origins = set()
    for case, sub in _cases(dataset):
        label, _ = _read(dataset / f"labels{sub}" / f"{case}.nii.gz")
        assert label.GetSize() == TINY.shape == (50, 60, 12)
        assert label.GetSpacing() == pytest.approx((2.9, 2.9, 3.0))  # slices are the coarsest axis
        assert label.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        assert np.linalg.norm(label.GetOrigin()) > 10.0  # a scanner-like origin, not the default zero
        origins.add(label.GetOrigin())
        for c in (0, 1):
            image, array = _read(dataset / f"images{sub}" / f"{case}_{c:04d}.nii.gz")
            assert array.dtype == np.int16 and array.max() > 100  # scanner-like integers
            assert image.GetSize() == label.GetSize()
            assert image.GetSpacing() == label.GetSpacing()
            assert image.GetOrigin() == label.GetOrigin()
            assert image.GetDirection() == label.GetDirection()
    assert len(origins) == TINY.num_train + TINY.num_test


def test_labels_are_binary_and_lesion_loads_span_a_range(dataset: Path):
    volumes = []
    for case, sub in _cases(dataset):
        label, array = _read(dataset / f"labels{sub}" / f"{case}.nii.gz")
        assert set(np.unique(array)) <= {0, 1}
        volumes.append(array.sum() * np.prod(label.GetSpacing()) / 1000.0)
    assert min(volumes) > 0
    assert max(volumes) > 5 * min(volumes) and max(volumes) > 5.0


def test_lesions_are_bright_on_flair_and_dark_on_t1(dataset: Path):
    inside = {0: [], 1: []}
    rim = {0: [], 1: []}
    for case, sub in _cases(dataset):
        lesion = _read(dataset / f"labels{sub}" / f"{case}.nii.gz")[1].astype(bool)
        around = ndimage.binary_dilation(lesion, iterations=2) & ~lesion
        for c in (0, 1):
            image = _read(dataset / f"images{sub}" / f"{case}_{c:04d}.nii.gz")[1]
            inside[c].append(image[lesion].mean() / image[image > np.percentile(image, 50)].mean())
            rim[c].append(image[around].mean() / image[image > np.percentile(image, 50)].mean())
    assert np.mean(inside[0]) > 1.15 * np.mean(rim[0])
    assert np.mean(inside[1]) < np.mean(rim[1])


def test_same_seed_gives_identical_arrays_other_seed_differs(tmp_path: Path):
    a = _arrays(make_demo_dataset(tmp_path / "a", TWO_CASES, seed=3))
    b = _arrays(make_demo_dataset(tmp_path / "b", TWO_CASES, seed=3, num_processes=2))  # order-independent too
    c = _arrays(make_demo_dataset(tmp_path / "c", TWO_CASES, seed=4))
    assert a.keys() == b.keys() == c.keys() and len(a) == 6
    for name in a:
        assert a[name].tobytes() == b[name].tobytes()
        assert not np.array_equal(a[name], c[name])


def test_nnunet_integrity_check_passes(dataset: Path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(dataset), num_processes=1)


def test_complete_dataset_is_skipped_other_settings_refused(tmp_path: Path):
    folder = make_demo_dataset(tmp_path, TWO_CASES)
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert make_demo_dataset(tmp_path, TWO_CASES) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps
    with pytest.raises(PDDDPMUserError, match="other settings"):
        make_demo_dataset(tmp_path, TWO_CASES, seed=1)
    with pytest.raises(PDDDPMUserError, match="already uses dataset id"):
        make_demo_dataset(tmp_path, TWO_CASES, dataset_name="Other")


def test_half_written_dataset_is_regenerated(tmp_path: Path):
    folder = make_demo_dataset(tmp_path, TWO_CASES)
    expected = _arrays(folder)
    (folder / "dataset.json").unlink()
    (folder / "imagesTr" / "wmh_001_0001.nii.gz").unlink()
    (folder / "imagesTr" / ".pdddpm_partial").mkdir()
    (folder / "imagesTr" / ".pdddpm_partial" / "x_wmh_001_0001.nii.gz").write_bytes(b"killed mid-write")
    make_demo_dataset(tmp_path, TWO_CASES)
    assert (folder / "dataset.json").is_file()
    assert not list(folder.rglob(".*"))
    assert {k: v.tobytes() for k, v in _arrays(folder).items()} == {k: v.tobytes() for k, v in expected.items()}


def test_foreign_folder_is_not_overwritten(tmp_path: Path):
    (tmp_path / "Dataset987_PDDDPMDemo").mkdir()
    (tmp_path / "Dataset987_PDDDPMDemo" / "notes.txt").write_text("someone else's data")
    with pytest.raises(PDDDPMUserError, match="not made by this generator"):
        make_demo_dataset(tmp_path, TWO_CASES)


def test_profile_is_an_overridable_dataclass():
    custom = dataclasses.replace(PROFILES["small"], num_train=3, in_plane_spacing=4.0, slice_thickness=6.0)
    assert isinstance(custom, DemoProfile)
    assert custom.shape == (45, 54, 30)
    assert PROFILES["small"].shape == (90, 108, 60) and PROFILES["gpu"].shape == (180, 216, 60)
    assert PROFILES["cpu"].shape == (58, 70, 20)
    with pytest.raises(PDDDPMUserError):
        make_demo_dataset("unused", dataclasses.replace(TINY, num_train=0))


def test_cli_writes_dataset_and_prints_next_command(tmp_path: Path, capsys):
    argv = ["-o", str(tmp_path), "-profile", "tiny", "-num_train", "2", "-num_test", "1", "-d", "988", "-seed", "2"]
    main([*argv, "-np", "1"])
    out = capsys.readouterr().out
    folder = tmp_path / "Dataset988_PDDDPMDemo"
    assert str(folder) in out
    assert "nnUNetv2_plan_and_preprocess -d 988 -c 2d 3d_fullres --verify_dataset_integrity" in out
    assert len(list((folder / "imagesTs").iterdir())) == 2 and len(list((folder / "labelsTs").iterdir())) == 1
    assert json.loads((folder / "pdddpm_demo.json").read_text())["profile"]["seed"] == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["-profile", "tiny", "-d", "1000"],
        ["-profile", "tiny", "-num_train", "0"],
        ["-profile", "tiny", "-np", "0"],
        ["-profile", "huge"],
    ],
)
def test_cli_bad_input_exits_2(tmp_path: Path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(["-o", str(tmp_path), *argv])
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_needs_output_or_nnunet_raw(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["-profile", "tiny"])
    assert e.value.code == 2
    assert "nnUNet_raw" in capsys.readouterr().err


def test_cli_help_explains_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--output", "-profile", "-seed", "--dataset_id", "--name", "-num_train", "-num_test", "-np"):
        assert flag in out
