"""Fig. 4 of the paper: Dice (mean and standard deviation over repeats) against the ensemble size.

Samples are reused: each repeat draws ``max(values)`` single-member samples per case (member ``m``
of repeat ``r`` uses seed ``seed + 1000 r + m``), and the ensemble of size ``n`` is the mean of
the first ``n`` of them, so a sweep over 1..10 costs 10 samples per case and repeat, not 55. The
sub-ensembles of one repeat are therefore nested, as when an ensemble is grown one sample at a time.
Fusion with the pre-segmenter (``-preseg_weight``, ``-confidence_gate``, ``--lesion_gate``) applies to each
sub-ensemble's mean, as in prediction, not to its members. The members are drawn one at a time, so none is
mirrored: the sweep measures the ensemble of noise draws, with ``mirrored_members`` off whatever the denoiser's
default (``--mirrored_members`` is refused; the settings written to ``ensemble.json`` say it).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.experiments.report import format_table, new_figure, save_figure, write_rows
from nnunet_pdddpm.experiments.runner import ExperimentRunner
from nnunet_pdddpm.inference.fusion import fuse_with_pre_segmentation

logger = logging.getLogger(__name__)

DEFAULT_VALUES = tuple(range(1, 11))
COLUMNS = ("ensemble_size", "dice_mean", "dice_std", "dice_min", "dice_max", "jaccard_mean", "hd95_mean",
           "lesion_f1_mean", "nfe_per_case", "seconds_per_case", "dice_per_repeat")


def member_seed(seed: int, repeat: int, member: int) -> int:
    return seed + 1000 * repeat + member


def check_unmirrored(sampling: dict) -> None:
    """The members are drawn one at a time, so none can be mirrored: ``--mirrored_members`` is one sentence."""
    if sampling.get("mirrored_members"):
        raise PDDDPMUserError("The ensemble experiment draws its members one at a time and cannot mirror them; "
                              "drop --mirrored_members.")


def run(runner: ExperimentRunner, output: Path, sampling: dict, values: Sequence[int] = DEFAULT_VALUES,
        repeats: int = 3) -> list[dict]:
    """PD-DDPM with ensembles of each size in ``values``, ``repeats`` times with other seeds; one row per size."""
    sizes = sorted(set(values))
    check_unmirrored(sampling)
    base = runner.settings(**{**sampling, "mirrored_members": False})
    # one sample from every selected fold per member: with several folds, a size here counts per fold
    member = replace(base, ensemble_size=1, ensemble_per_fold=True, uncertainty="none", case_scores=False,
                     pre_segmentation_weight=0.0, confidence_gate=None, lesion_gate=False)
    pre = runner.pre_segmentation()
    runs = {n: [] for n in sizes}
    for r in range(repeats):
        sums, nfe, seconds = {}, {}, {}
        for m in range(sizes[-1]):
            settings = replace(member, seed=member_seed(base.seed, r, m))
            for case in runner.cases:
                result, case_nfe, case_seconds = runner.sample(case, settings, pre)
                sums[case] = result.probabilities + sums.get(case, 0)
                # the pre-segmentation is counted once per ensemble, not once per member
                nfe[case] = nfe.get(case, pre.nfe[case]) + case_nfe - pre.nfe[case]
                seconds[case] = seconds.get(case, pre.seconds[case]) + case_seconds - pre.seconds[case]
            if m + 1 in runs:
                name = f"ensemble_{m + 1:02d}_repeat_{r}"
                for case in runner.cases:
                    probabilities = sums[case] / (m + 1)
                    if base.fuses_pre_segmentation:
                        probabilities = fuse_with_pre_segmentation(
                            probabilities, pre.probabilities(*runner.case_data(case), case).float(),
                            base.pre_segmentation_weight, base.confidence_gate, base.lesion_gate)
                    runner.export(name, case, probabilities, None, nfe[case], seconds[case])
                runs[m + 1].append(runner.evaluate(name))
                dice = runs[m + 1][-1].metrics.get("dice", float("nan"))
                logger.info(f"ensemble {m + 1}, repeat {r}: Dice {dice:.4f}")
    rows = [_row(n, runs[n]) for n in sizes]
    write_rows(rows, COLUMNS, output / "ensemble.csv", output / "ensemble.json",
               {"experiment": "ensemble", "repeats": repeats, "settings": base.to_dict()})
    plot(rows, output / "ensemble.png")
    logger.info(format_table(rows, COLUMNS[:-1]))
    return rows


def _row(size: int, runs: list) -> dict:
    dice = np.array([run.metrics.get("dice", np.nan) for run in runs], dtype=float)

    def mean(metric: str) -> float:
        return float(np.nanmean([run.metrics.get(metric, np.nan) for run in runs]))

    return {"ensemble_size": size, "dice_mean": float(np.mean(dice)), "dice_std": float(np.std(dice)),
            "dice_min": float(np.min(dice)), "dice_max": float(np.max(dice)), "jaccard_mean": mean("jaccard"),
            "hd95_mean": mean("hd95"), "lesion_f1_mean": mean("lesion_f1"),
            "nfe_per_case": float(np.mean([run.nfe_per_case for run in runs])),
            "seconds_per_case": float(np.mean([run.seconds_per_case for run in runs])),
            "dice_per_repeat": ";".join(f"{d:.6f}" for d in dice)}


def plot(rows: list[dict], path: Path) -> Path:
    fig, (ax, ax_std) = new_figure(2, width=4.6)
    n = [r["ensemble_size"] for r in rows]
    ax.errorbar(n, [r["dice_mean"] for r in rows], yerr=[r["dice_std"] for r in rows], fmt="o-", capsize=3)
    ax.set_xlabel("ensemble size")
    ax.set_ylabel("Dice (mean ± std over repeats)")
    ax_std.plot(n, [r["dice_std"] for r in rows], "s-", color="tab:red")
    ax_std.set_xlabel("ensemble size")
    ax_std.set_ylabel("std of Dice over repeats")
    for a in (ax, ax_std):
        a.set_xticks(n)
    return save_figure(fig, path)
