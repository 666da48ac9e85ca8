"""Table 1 of the paper: the pre-segmenter alone, vanilla DDPM and PD-DDPM on the same test cases.

Vanilla DDPM starts from pure noise at T and runs the whole reverse process (the paper: DDPM,
1000 steps); PD-DDPM starts from the pre-segmentation diffused to T'. Both use the same denoiser and
ensemble size, so the difference is the start of the reverse process.
"""
from __future__ import annotations

import logging
from pathlib import Path

from nnunet_pdddpm.experiments.common import describe, metrics_row
from nnunet_pdddpm.experiments.report import format_table, new_figure, save_figure, write_rows
from nnunet_pdddpm.experiments.runner import ExperimentRunner
from nnunet_pdddpm.inference.settings import FUSION_FIELDS

logger = logging.getLogger(__name__)

COLUMNS = ("method", "dice", "hd95", "jaccard", "lesion_f1", "mean_uncertainty", "nfe_per_case", "seconds_per_case",
           "sampling")


def run(runner: ExperimentRunner, output: Path, sampling: dict, vanilla_sampling: dict | None = None) -> list[dict]:
    """``sampling``: overrides of the denoiser's settings for PD-DDPM; ``vanilla_sampling``: for vanilla DDPM
    (default: the same). Returns the three rows."""
    T = runner.predictor.diffusion_config.num_train_timesteps
    pre = runner.pre_segmentation()
    pre_run = runner.run_pre_segmentation("pre_segmenter", pre)
    vanilla_changes = {k: v for k, v in (vanilla_sampling or {}).items() if v is not None}
    vanilla_base = {k: v for k, v in sampling.items() if k not in FUSION_FIELDS}  # vanilla: no pre-segmentation
    vanilla = runner.settings(**{**vanilla_base, **vanilla_changes}, vanilla=True)
    pd_ddpm = runner.settings(**sampling)
    rows = [
        {"method": "pre-segmenter", **metrics_row(pre_run),
         "sampling": "nnU-Net sliding window" + (", test-time mirroring" if runner.models.use_mirroring else "")},
        {"method": "vanilla DDPM", **metrics_row(runner.run_setting("vanilla_ddpm", vanilla)),
         "sampling": describe(vanilla, T)},
        {"method": "PD-DDPM", **metrics_row(runner.run_setting("pd_ddpm", pd_ddpm, pre)),
         "sampling": describe(pd_ddpm, T)},
    ]
    write_rows(rows, COLUMNS, output / "table1.csv", output / "table1.json",
               {"experiment": "table1", "pre_segmenter": runner.models.pre_segmenter_folder,
                "denoiser": runner.models.denoiser_folder})
    plot(rows, output / "table1.png")
    logger.info(format_table(rows, COLUMNS))
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    """Bars of Dice, Jaccard and lesion F1 (left) and HD95 (right) per method."""
    fig, (ax, ax_hd) = new_figure(2, width=4.6)
    names = [r["method"] for r in rows]
    metrics = ("dice", "jaccard", "lesion_f1")
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        ax.bar([j + i * width for j in range(len(rows))], [r.get(metric, float("nan")) for r in rows], width,
               label=metric.replace("_", " "))
    ax.set_xticks([j + width for j in range(len(rows))], names, rotation=15)
    ax.set_ylim(0, 1.15)  # room above 1 for the legend: it must not hide a bar (lesion F1 is often above 0.9)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.legend(fontsize=8, loc="upper center", ncol=len(metrics), frameon=False)
    ax.set_title("overlap and detection (higher is better)")
    ax_hd.bar(names, [r.get("hd95", float("nan")) for r in rows], color="tab:gray")
    ax_hd.set_ylabel("HD95 (mm)")
    ax_hd.set_title("HD95 (lower is better)")
    ax_hd.tick_params(axis="x", rotation=15)
    return save_figure(fig, path)
