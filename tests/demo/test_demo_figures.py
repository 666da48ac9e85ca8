"""The demo's case figure names the uncertainty map it draws: the refiner writes entropy, the paper variance."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_pdddpm.demo import figures


def _write(array: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.mark.parametrize("kind, title", [("entropy", "PD-DDPM uncertainty (entropy)"),
                                         ("mutual_information", "PD-DDPM uncertainty (mutual information)"),
                                         ("variance", "PD-DDPM uncertainty (variance)")])
def test_the_uncertainty_panel_is_titled_by_the_map_it_shows(tmp_path, monkeypatch, kind, title) -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((3, 16, 16), np.uint8)
    label[1, 4:9, 5:10] = 1
    flair = _write(rng.normal(100, 10, label.shape).astype(np.float32), tmp_path / "flair.nii.gz")
    reference = _write(label, tmp_path / "ref.nii.gz")
    unc = _write(rng.random(label.shape).astype(np.float32), tmp_path / "unc.nii.gz")
    drawn, save = {}, figures.save_figure

    def keep(fig, path):  # read the titles, then save as the demo does
        drawn["titles"] = [ax.get_title() for ax in fig.axes]
        return save(fig, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    out = figures.case_figure(flair, reference, {"PD-DDPM": reference}, unc, tmp_path / "case.png",
                              uncertainty_kind=kind)
    assert out.is_file() and drawn["titles"][0] == "FLAIR + reference (slice 1)"
    assert drawn["titles"][2] == title
