"""Table 2 of the paper: PD-DDPM from pre-segmentations of different quality.

The sources are the pre-segmenter itself, degraded versions of it (:class:`Degradation`: all
background as the paper's "Zero", in-plane erosion or dilation, probability noise) and, optionally,
other checkpoints of the pre-segmenter (e.g. ``checkpoint_best.pth``). Each row gives the
pre-segmentation's own metrics next to PD-DDPM's, with the same denoiser and sampling settings.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from nnunet_pdddpm.experiments.common import METRIC_COLUMNS, metrics_row, slug
from nnunet_pdddpm.experiments.pre_segmentations import Degradation, DegradedPreSegmentation
from nnunet_pdddpm.experiments.report import format_table, new_figure, save_figure, write_rows
from nnunet_pdddpm.experiments.runner import ExperimentRunner

logger = logging.getLogger(__name__)

DEFAULT_DEGRADATIONS = ("zero", "erode:1", "dilate:1", "dilate:2", "noise:0.2", "noise:0.4")
COLUMNS = ("pre_segmentation", *(f"pre_segmentation_{m}" for m in METRIC_COLUMNS), *METRIC_COLUMNS,
           "mean_uncertainty", "nfe_per_case", "seconds_per_case")


def run(runner: ExperimentRunner, output: Path, sampling: dict,
        degradations: Sequence[str] = DEFAULT_DEGRADATIONS, checkpoints: Sequence[str] = (),
        seed: int = 0) -> list[dict]:
    """PD-DDPM from each pre-segmentation; rows sorted by the pre-segmentation's Dice (best last)."""
    settings = runner.settings(**sampling)
    base = runner.pre_segmentation()
    sources = [("pre-segmenter", base)]
    sources += [(d.name, DegradedPreSegmentation(base, d, seed)) for d in map(Degradation.parse, degradations)]
    sources += [(checkpoint, runner.pre_segmentation(checkpoint)) for checkpoint in checkpoints]
    rows = []
    for label, pre in sources:
        pre_run = runner.run_pre_segmentation(f"pre_{slug(label)}", pre)
        pd_run = runner.run_setting(f"pd_ddpm_{slug(label)}", settings, pre)
        rows.append({"pre_segmentation": label, **metrics_row(pre_run, "pre_segmentation_"), **metrics_row(pd_run)})
    rows.sort(key=lambda r: r.get("pre_segmentation_dice", 0.0))
    write_rows(rows, COLUMNS, output / "preseg_quality.csv", output / "preseg_quality.json",
               {"experiment": "preseg_quality", "settings": settings.to_dict()})
    plot(rows, output / "preseg_quality.png")
    logger.info(format_table(rows, ("pre_segmentation", "pre_segmentation_dice", *METRIC_COLUMNS)))
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    """PD-DDPM Dice against the pre-segmentation's Dice, one labelled point per source."""
    fig, (ax,) = new_figure(1, width=5.2, height=4.4)
    x = [r["pre_segmentation_dice"] for r in rows]
    y = [r["dice"] for r in rows]
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="PD-DDPM = pre-segmentation")
    ax.scatter(x, y, zorder=3)
    for xi, yi, r in zip(x, y, rows):
        ax.annotate(r["pre_segmentation"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("pre-segmentation Dice")
    ax.set_ylabel("PD-DDPM Dice")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)
