"""Demo figures: test slices with reference and predicted contours, and the PD-DDPM uncertainty map.

One PNG per case, one row: FLAIR with the reference contour, then FLAIR with each method's
contour (reference thin underneath), then the uncertainty map. The slice shown is the one with
the largest reference lesion area, where the methods differ most visibly. Arrays are read in
SimpleITK's (z, y, x) order and shown with the anterior side up (``origin="lower"``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_pdddpm.experiments.report import new_figure, save_figure

REFERENCE_COLOUR = "lime"
METHOD_COLOURS = ("tab:orange", "tab:red", "tab:cyan", "tab:purple")


def _read(path: Path) -> np.ndarray:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return array if array.ndim == 3 else array[None]


def lesion_slice(reference: np.ndarray) -> int:
    """Index of the axial slice (first axis) with the most reference foreground; the middle one if none."""
    area = (reference > 0).reshape(reference.shape[0], -1).sum(1)
    return int(area.argmax()) if area.any() else reference.shape[0] // 2


def case_figure(flair: Path, reference: Path, predictions: dict[str, Path], uncertainty: Path | None,
                output: Path, title: str = "", uncertainty_kind: str = "variance") -> Path:
    """Write ``output`` (PNG) for one case; ``predictions`` maps method name -> segmentation file;
    ``uncertainty_kind`` names the map in its title (``SamplingSettings.uncertainty`` of the run that wrote it)."""
    image, ref = _read(flair), _read(reference)
    z = lesion_slice(ref)
    panels = 1 + len(predictions) + (uncertainty is not None)
    fig, axes = new_figure(panels, width=3.0, height=3.4)
    lo, hi = np.percentile(image[z], (1, 99.5))
    show = {"cmap": "gray", "vmin": lo, "vmax": hi, "origin": "lower", "interpolation": "nearest"}

    axes[0].imshow(image[z], **show)
    _contour(axes[0], ref[z], REFERENCE_COLOUR, 1.2)
    axes[0].set_title(f"FLAIR + reference (slice {z})", fontsize=9)
    for ax, (name, path), colour in zip(axes[1:], predictions.items(), METHOD_COLOURS):
        ax.imshow(image[z], **show)
        _contour(ax, ref[z], REFERENCE_COLOUR, 0.6)
        _contour(ax, _read(path)[z], colour, 1.2)
        ax.set_title(name, fontsize=9)
    if uncertainty is not None:
        unc = _read(uncertainty)[z]
        shown = axes[-1].imshow(unc, cmap="magma", origin="lower", interpolation="nearest")
        _contour(axes[-1], ref[z], REFERENCE_COLOUR, 0.6)
        axes[-1].set_title(f"PD-DDPM uncertainty ({uncertainty_kind.replace('_', ' ')})", fontsize=9)
        fig.colorbar(shown, ax=axes[-1], fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, output)


def _contour(ax, mask: np.ndarray, colour: str, width: float) -> None:
    if (mask > 0).any():
        ax.contour((mask > 0).astype(float), levels=[0.5], colors=colour, linewidths=width, origin="lower")
