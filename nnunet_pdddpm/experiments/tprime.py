"""Fig. 3 of the paper: Dice and mean uncertainty (ensemble variance) against T'.

T'=0 returns the pre-segmentation unchanged, so its Dice is the pre-segmenter's; large T' approach
vanilla DDPM (T'=T starts from almost pure noise).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from nnunet_pdddpm.experiments.common import metrics_row
from nnunet_pdddpm.experiments.report import format_table, new_figure, save_figure, write_rows
from nnunet_pdddpm.experiments.runner import ExperimentRunner

logger = logging.getLogger(__name__)

DEFAULT_VALUES = (50, 100, 200, 300, 400, 500, 600, 700, 800, 1000)
COLUMNS = ("t_prime", "dice", "hd95", "jaccard", "lesion_f1", "mean_uncertainty", "nfe_per_case", "seconds_per_case")


def run(runner: ExperimentRunner, output: Path, sampling: dict, values: Sequence[int] = DEFAULT_VALUES) -> list[dict]:
    """One PD-DDPM run per T' in ``values`` (other settings from ``sampling``); returns one row per T'."""
    pre = runner.pre_segmentation()
    pre_run = runner.run_pre_segmentation("pre_segmenter", pre)
    rows = []
    for t_prime in sorted(set(values)):
        settings = runner.settings(**{**sampling, "t_prime": t_prime})
        rows.append({"t_prime": t_prime, **metrics_row(runner.run_setting(f"t_prime_{t_prime:04d}", settings, pre))})
    write_rows(rows, COLUMNS, output / "tprime.csv", output / "tprime.json",
               {"experiment": "tprime", "pre_segmenter": metrics_row(pre_run),
                "settings": runner.settings(**sampling).to_dict()})
    plot(rows, pre_run.metrics.get("dice", float("nan")), output / "tprime.png")
    logger.info(format_table(rows, COLUMNS))
    return rows


def plot(rows: list[dict], pre_segmenter_dice: float, path: Path) -> Path:
    fig, (ax,) = new_figure(1, width=6.0)
    t = [r["t_prime"] for r in rows]
    ax.plot(t, [r["dice"] for r in rows], "o-", color="tab:blue", label="PD-DDPM Dice")
    ax.axhline(pre_segmenter_dice, color="tab:blue", ls="--", lw=1, label="pre-segmenter Dice")
    ax.set_xlabel("T'")
    ax.set_ylabel("Dice", color="tab:blue")
    unc = ax.twinx()
    unc.plot(t, [r.get("mean_uncertainty", float("nan")) for r in rows], "s-", color="tab:red",
             label="mean uncertainty")
    unc.set_ylabel("mean uncertainty (ensemble variance)", color="tab:red")
    lines = ax.get_legend_handles_labels()
    more = unc.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
    ax.set_title("Dice and uncertainty vs T'")
    return save_figure(fig, path)
