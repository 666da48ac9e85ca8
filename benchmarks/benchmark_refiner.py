"""Does the refiner improve on the nnU-Net it starts from, against that nnU-Net given the same training?

On the WMH-like set of the fidelity benchmark (the demo's generator, 16 training and 12 test cases), per seed:

1. plain nnU-Net (``nnUNetTrainer_refinerCPU``) trained on all five folds to its plateau (its validation curve is
   printed and stored: the pseudo Dice of every epoch, from its checkpoint's log);
2. (a) the refiner (``PDDDPMTrainer_refinerCPU``): fold 0's nnU-Net as its initialisation, the other folds'
   out-of-fold probabilities as half of its training starts, sampled from fold 0's probabilities (soft start)
   at the T' its validation sweep chose, and at fixed T';
   (b) the same nnU-Net trained the refiner's budget more (``nnUNetTrainer_refinerCPU_more``: same iterations,
   batch and optimiser, nnU-Net's network and loss);
   (c) two nnU-Nets of fold 0 (this seed's and the previous seed's; seed 0: seed 1's) averaged.

Every nnU-Net row uses its softmax for uncertainty (voxel map: entropy; case score: the mean entropy); the
refiner's rows score every map of one ensemble (variance, entropy, mutual information, expected entropy) and
the case scores of the samples (1 - mean pairwise Dice between samples, the mean uncertainty). Per case: Dice,
HD95, lesion F1, AVD and each map's error-AUROC; case-level AURC (risk = 1 - Dice) of each case score, pooled
over seeds x cases; paired bootstrap 95 % intervals of Dice and lesion F1 against (1), (b) and (c).

    python -m benchmarks.benchmark_refiner -o WORK                 # documented table (3 seeds)
    python -m benchmarks.benchmark_refiner -o WORK --seeds 0       # one seed
    python -m benchmarks.benchmark_refiner -o WORK --quick         # the tiny set and models, two folds (tests)

Everything is reused from WORK on a rerun (dataset, preprocessing, trained models, sampled cases). Output: a table,
``WORK/refiner.json`` (rows, per-case values, learning curves) and ``WORK/refiner.csv``. ``--refiner_budget 3``,
``--refiner_schedule poly`` and ``--refiner_starts mirrored`` train other refiners (and same-budget nnU-Nets) on the
same nnU-Nets and write ``refiner_x3.*``, ``refiner_poly.*`` or ``refiner_tta.*``, sampling in ``WORK/sampling_x3``,
``WORK/sampling_poly`` or ``WORK/sampling_tta``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.benchmark_fidelity import FULL as FIDELITY
from benchmarks.benchmark_fidelity import QUICK as FIDELITY_QUICK
from benchmarks.benchmark_fidelity import model_folder, prepare_dataset, train
from nnunet_pdddpm.evaluation.paired import paired_difference
from nnunet_pdddpm.evaluation.risk_coverage import aurc
from nnunet_pdddpm.experiments.report import write_rows
from nnunet_pdddpm.inference.settings import UNCERTAINTY_KINDS, PerformanceSettings
from nnunet_pdddpm.io_utils import write_json_atomic

PER_CASE_METRICS = ("dice", "hd95", "lesion_f1", "avd")
PAIRED_METRICS = ("dice", "lesion_f1")
REFINER_MAPS = tuple(k for k in ("variance", "entropy", "mutual_information", "expected_entropy")
                     if k in UNCERTAINTY_KINDS)
NNUNET, MORE, ENSEMBLE = "nnU-Net", "nnU-Net + refiner's budget", "2 nnU-Nets (seeds) averaged"
PAPER = "PD-DDPM, paper's recipe"


@dataclass(frozen=True)
class Setup:
    dataset: object
    dataset_id: int
    dataset_name: str
    pre_segmenter: str
    refiner: str
    more: str
    t_primes: tuple  # ("auto" (the refiner's validation sweep) or a fixed T', the maps scored there)
    steps: int
    ensemble_size: int
    paper: str | None = None  # the paper's recipe at the refiner's budget (head-to-head row; None: not run)
    folds: int = 5  # nnU-Net's folds of each seed (another number is written as the dataset's splits_final.json)
    tag: str = ""  # of the sampling folder and the outputs: another refiner in the same work folder samples apart


FULL = Setup(FIDELITY.dataset, FIDELITY.dataset_id, FIDELITY.dataset_name, "nnUNetTrainer_refinerCPU",
             "PDDDPMTrainer_refinerCPU", "nnUNetTrainer_refinerCPU_more", (("auto", REFINER_MAPS), (300, ("entropy",))),
             5, 5, "PDDDPMTrainer_refinerCPU_paper")
QUICK = Setup(FIDELITY_QUICK.dataset, FIDELITY_QUICK.dataset_id, FIDELITY_QUICK.dataset_name, "nnUNetTrainer_tiny",
              "PDDDPMTrainer_tiny_refiner", "nnUNetTrainer_tiny_more", (("auto", REFINER_MAPS),), 2, 2,
              folds=FIDELITY_QUICK.folds)
#: --refiner_budget 3: the refiner and the same nnU-Net trained three times as long (the nnU-Nets are shared)
BUDGET_X3 = {"refiner": "PDDDPMTrainer_refinerCPU_x3", "more": "nnUNetTrainer_refinerCPU_more_x3", "paper": None,
             "tag": "_x3"}


#: --refiner_schedule poly: the refiner and the same nnU-Net at nnU-Net's poly learning rate instead of a constant one
SCHEDULE_POLY = {"refiner": "PDDDPMTrainer_refinerCPU_poly", "more": "nnUNetTrainer_refinerCPU_more_poly",
                 "paper": None, "tag": "_poly"}


#: --refiner_starts mirrored: the refiner trained on out-of-fold starts averaged over nnU-Net's test-time mirrorings
#: (as the sampling start is predicted); its yardstick is the constant-rate same-budget nnU-Net, shared
STARTS_MIRRORED = {"refiner": "PDDDPMTrainer_refinerCPU_tta", "more": "nnUNetTrainer_refinerCPU_more", "paper": None,
                   "tag": "_tta"}


def with_refiner_budget(setup: Setup, budget: int, schedule: str = "constant", starts: str = "single") -> Setup:
    """``setup`` at ``--refiner_budget`` (1: itself; 3: :data:`BUDGET_X3`), ``--refiner_schedule poly``
    (:data:`SCHEDULE_POLY`) or ``--refiner_starts mirrored`` (:data:`STARTS_MIRRORED`); one of them, for the full
    benchmark only."""
    options = (("--refiner_budget 3", BUDGET_X3, budget != 1),
               ("--refiner_schedule poly", SCHEDULE_POLY, schedule != "constant"),
               ("--refiner_starts mirrored", STARTS_MIRRORED, starts != "single"))
    chosen = [(flag, variant) for flag, variant, on in options if on]
    if not chosen:
        return setup
    if setup is not FULL:
        raise SystemExit(f"{chosen[0][0]} is for the full benchmark's models; drop --quick/--demo or {chosen[0][0]}.")
    if len(chosen) > 1:
        raise SystemExit(f"{' and '.join(f for f, _ in chosen)} are separate runs; give one of them.")
    return dataclasses.replace(setup, **chosen[0][1])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="work folder (reused between runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--quick", action="store_true", help="tiny dataset and models (seconds per stage; for tests)")
    p.add_argument("--num_processes", type=int, default=2, help="processes for dataset creation and preprocessing")
    p.add_argument("--train_only", action="store_true", help="train every model of every seed, then stop")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training and sampling device")
    p.add_argument("--jobs", type=int, default=1,
                   help="trainings run at once (each is its own nnUNetv2_train; default 1)")
    p.add_argument("--folds", type=int, default=None,
                   help="nnU-Net's folds per seed (default 5; 2 with --quick): fewer train faster, on fewer cases each")
    p.add_argument("--without_paper", action="store_true",
                   help="leave out the paper's recipe (three trainings fewer; its row is then missing)")
    p.add_argument("--refiner_budget", type=int, choices=(1, 3), default=1,
                   help="the refiner's training budget in units of 300 iterations of 13 (default 1); 3 trains "
                        "PDDDPMTrainer_refinerCPU_x3 and nnUNetTrainer_refinerCPU_more_x3 on the same nnU-Nets, "
                        "without the paper's recipe, and writes refiner_x3.json/.csv beside the default's")
    p.add_argument("--refiner_schedule", choices=("constant", "poly"), default="constant",
                   help="the refiner's learning rate (default constant 1e-3); poly trains "
                        "PDDDPMTrainer_refinerCPU_poly and nnUNetTrainer_refinerCPU_more_poly (nnU-Net's poly "
                        "schedule from 1e-3) on the same nnU-Nets, without the paper's recipe, and writes "
                        "refiner_poly.json/.csv")
    p.add_argument("--refiner_starts", choices=("single", "mirrored"), default="single",
                   help="the refiner's out-of-fold training starts (default: one pass of the fold's nnU-Net); "
                        "mirrored trains PDDDPMTrainer_refinerCPU_tta (logits averaged over nnU-Net's test-time "
                        "mirrorings, as the sampling start is predicted) on the same nnU-Nets, without the paper's "
                        "recipe, and writes refiner_tta.json/.csv")
    return p


def partner_seed(seed: int) -> int:
    """The seed whose fold-0 nnU-Net is averaged with this seed's in the two-network ensemble: the previous one
    (seed 0: seed 1), so that it does not depend on which seeds a run lists."""
    return seed - 1 if seed > 0 else 1


def learning_curve(work: Path, seed: int, dataset: str, trainer: str) -> dict:
    """Per-epoch pseudo Dice (and its EMA) of fold 0, from the checkpoint's log (nnU-Net's progress data)."""
    from nnunet_pdddpm.checkpoints import load_nnunet_checkpoint

    log = load_nnunet_checkpoint(model_folder(work, seed, dataset, trainer) / "fold_0" / "checkpoint_final.pth")
    return {k: [float(v) for v in log["logging"][k]] for k in ("mean_fg_dice", "ema_fg_dice")}


def _runner(work: Path, seed: int, dataset: Path, setup: Setup, segmenter_seed: int, segmenter: str, name: str,
            device: str = "cpu", denoiser: str | None = None):
    from nnunet_pdddpm.experiments.runner import ExperimentRunner, ModelSelection

    models = ModelSelection(str(model_folder(work, seed, dataset.name, denoiser or setup.refiner)),
                            str(model_folder(work, segmenter_seed, dataset.name, segmenter)), folds=(0,),
                            device=device, performance=PerformanceSettings(max_batch_size=32))
    return ExperimentRunner(models, dataset / "imagesTs", dataset / "labelsTs",
                            work / f"sampling{setup.tag}" / f"seed{seed}" / name, verbose=False)


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    from nnunet_pdddpm.inference.uncertainty import predictive_entropy

    return predictive_entropy(probabilities)


def foreground_mean(values: torch.Tensor, probabilities: torch.Tensor) -> float:
    """Mean of a map over the predicted foreground (the whole case when nothing is predicted)."""
    fg = probabilities.argmax(0) > 0
    return float(values[fg].mean() if fg.any() else values.mean())


def per_case(runner, name: str, metrics=PER_CASE_METRICS) -> dict[str, dict[str, float]]:
    return evaluation_per_case(runner.output / "evaluation" / f"{name}.json", (*metrics, "uncertainty_auroc"))


def evaluation_per_case(summary_file: Path, metrics) -> dict[str, dict[str, float]]:
    """{case: {metric: value}} of the first foreground label of an evaluation summary (NaN where it has none)."""
    summary = json.loads(summary_file.read_text())
    label = str(summary["labels"][0])
    return {c["case"]: {m: c["metrics"][label].get(m, float("nan")) for m in metrics}
            for c in summary["metric_per_case"]}


def segmenter_row(runner, name: str, method: str, probabilities_of, extra_scores=None) -> dict:
    """A softmax model's row: its entropy as the voxel map, the mean entropy as the case score."""
    scores = {}
    if not (runner.output / "evaluation" / f"{name}.json").is_file():
        for case in runner.cases:
            probs, nfe = probabilities_of(case)
            ent = entropy(probs)
            scores[case] = {"mean entropy": float(ent.mean()), "mean entropy (foreground)": foreground_mean(ent, probs),
                            **(extra_scores(case) if extra_scores else {})}
            runner.export(name, case, probs, ent, nfe, 0.0, scores=scores[case])
        runner.evaluate(name)
    log = json.loads((runner.folder(name) / "pdddpm_cases.json").read_text())
    cases = per_case(runner, name)
    for case, values in cases.items():
        values["maps"] = {"entropy": values.pop("uncertainty_auroc")}
        values["scores"] = log[case]["scores"]
    return {"method": method, "sampler": "", "nfe": float(np.mean([log[c]["nfe"] for c in cases])), "cases": cases}


def refiner_rows(runner, setup: Setup, pre, method: str = "PD-DDPM refiner", prefix: str = "refiner",
                 t_primes: tuple | None = None) -> list[dict]:
    """One row per T' of ``t_primes`` (default: the setup's) of the denoiser ``runner`` samples with."""
    rows = []
    for t_prime, maps in t_primes or setup.t_primes:
        changes = {} if t_prime == "auto" else {"t_prime": t_prime}
        settings = runner.settings(ensemble_size=setup.ensemble_size, sampler="ddim", steps=setup.steps, **changes)
        label = "T' of the sweep" if t_prime == "auto" else f"T'={settings.t_prime}"  # the sweep's T' varies by seed
        cases: dict[str, dict] = {}
        nfe = []
        for kind in maps:  # the same samples (seeded per case, patch and member), one map each
            s = dataclasses.replace(settings, uncertainty=kind)
            name = f"{prefix}_t{settings.t_prime}_{kind}"
            done = (runner.output / "evaluation" / f"{name}.json").is_file()
            if not done:
                for case in runner.cases:
                    result, n, seconds = runner.sample(case, s, pre)
                    scores = dict(getattr(result, "scores", None) or {})
                    runner.export(name, case, result.probabilities, result.uncertainty, n, seconds, scores=scores)
                runner.evaluate(name)
            log = json.loads((runner.folder(name) / "pdddpm_cases.json").read_text())
            for case, values in per_case(runner, name).items():
                row = cases.setdefault(case, {**{m: values[m] for m in PER_CASE_METRICS}, "maps": {}, "scores": {}})
                row["maps"][kind] = values["uncertainty_auroc"]
                sc = log[case].get("scores", {})
                if "pairwise_dice" in sc:
                    row["scores"]["1 - pairwise Dice of samples"] = 1 - sc["pairwise_dice"]
                for key in ("mean_uncertainty", "mean_uncertainty_foreground"):
                    if key in sc:
                        row["scores"][f"{key.replace('_', ' ')} ({kind})"] = sc[key]
                nfe.append(log[case]["nfe"])
        start = "soft start" if settings.soft_pre_segmentation else "hard start"
        rows.append({"method": method, "sampler": f"{label}, ddim {setup.steps} steps x {setup.ensemble_size}, {start}",
                     "t_prime": settings.t_prime, "nfe": float(np.mean(nfe)), "cases": cases})
    return rows


def training_stages(seeds: list[int], setup: Setup) -> list[list[tuple[int, str, int]]]:
    """(seed, trainer, fold) of every training, in two stages: nnU-Net's folds of each seed (five; two with --quick)
    and the ensemble partners' fold 0; then what starts from them (refiner, the same nnU-Net trained more, the
    paper's recipe). Within a stage the trainings are independent."""
    first = [(seed, setup.pre_segmenter, fold) for seed in seeds for fold in range(setup.folds)]
    first += [(p, setup.pre_segmenter, 0) for p in sorted({partner_seed(s) for s in seeds} - set(seeds))]
    second = [(seed, trainer, 0) for seed in seeds for trainer in (setup.refiner, setup.more, setup.paper) if trainer]
    return [first, second]


def train_all(work: Path, seeds: list[int], dataset: Path, env: dict, setup: Setup, device: str, jobs: int) -> None:
    """Every training of ``seeds``, ``jobs`` at a time within a stage (each a ``nnUNetv2_train`` process)."""
    from concurrent.futures import ThreadPoolExecutor

    for stage in training_stages(seeds, setup):
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            futures = [pool.submit(train, work, setup, dataset.name, env, seed, trainer, fold, device)
                       for seed, trainer, fold in stage]
            for future in futures:
                future.result()  # the first failure raises (its log named); the others finish first


def score_seed(work: Path, seed: int, dataset: Path, setup: Setup, device: str = "cpu") -> list[dict]:
    partner = partner_seed(seed)
    print(f"seed {seed}: sampling and scoring", flush=True)
    base = _runner(work, seed, dataset, setup, seed, setup.pre_segmenter, "nnunet", device)
    pre = base.pre_segmentation()
    more = _runner(work, seed, dataset, setup, seed, setup.more, "more", device)
    more_pre = more.pre_segmentation()
    other = _runner(work, seed, dataset, setup, partner, setup.pre_segmenter, f"nnunet_seed{partner}", device)
    other_pre = other.pre_segmentation()

    def probs_of(runner, source):
        def get(case):
            data, properties = runner.case_data(case)
            return source.probabilities(data, properties, case), source.nfe[case]
        return get

    def ensemble_probs(case):
        (p1, n1), (p2, n2) = probs_of(base, pre)(case), probs_of(other, other_pre)(case)
        return (p1 + p2) / 2, n1 + n2

    def members_disagree(case):
        (p1, _), (p2, _) = probs_of(base, pre)(case), probs_of(other, other_pre)(case)
        a, b = p1.argmax(0) > 0, p2.argmax(0) > 0
        denom = float(a.sum() + b.sum())
        return {"1 - pairwise Dice of members": 1 - (2 * float((a & b).sum()) / denom if denom else 1.0)}

    ens = _runner(work, seed, dataset, setup, seed, setup.pre_segmenter, "ensemble", device)
    rows = [segmenter_row(base, "nnunet", NNUNET, probs_of(base, pre)),
            segmenter_row(more, "more", MORE, probs_of(more, more_pre)),
            segmenter_row(ens, "ensemble", ENSEMBLE, ensemble_probs, members_disagree),
            *refiner_rows(base, setup, pre)]
    if setup.paper:  # the paper's recipe on the same pre-segmentation (hard start), at the T' its sweep chose and 300
        paper = _runner(work, seed, dataset, setup, seed, setup.pre_segmenter, "paper", device, setup.paper)
        rows += refiner_rows(paper, setup, paper.pre_segmentation(), PAPER, "paper",
                             (("auto", ("variance",)), (300, ("variance",))))
    return [{"seed": seed, **r} for r in rows]


def summarise(results: list[dict]) -> list[dict]:
    """One row per (method, sampler): means over seeds x cases, paired differences, error-AUROC and AURC."""
    by_seed = {(r["seed"], r["method"]): r["cases"] for r in results if not r["method"].startswith("PD-")}
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["sampler"]), []).append(r)
    rows = []
    for (method, sampler), runs in groups.items():
        values = [(r["seed"], c, v) for r in runs for c, v in r["cases"].items()]
        row = {"method": method, "sampler": sampler, "seeds": len(runs), "cases": len(values),
               "t_prime_per_seed": {str(r["seed"]): r["t_prime"] for r in runs if "t_prime" in r},
               "nfe_per_case": float(np.mean([r["nfe"] for r in runs]))}
        for m in PER_CASE_METRICS:
            row[m] = nanmean([v[m] for _, _, v in values])
        for against, short in ((NNUNET, "nnunet"), (MORE, "more"), (ENSEMBLE, "ensemble")):
            if against == method:
                continue
            for m in PAIRED_METRICS:
                d = paired_difference([by_seed[(s, against)][c][m] for s, c, _ in values], [v[m] for _, _, v in values])
                row[f"delta_{m}_vs_{short}"] = [d["mean"], d["low"], d["high"]]
        row["error_auroc"] = {k: nanmean([v["maps"][k] for _, _, v in values])
                              for k in values[0][2]["maps"]}
        risk = [1 - v["dice"] for _, _, v in values]
        row["aurc"] = {k: aurc([v["scores"].get(k, np.nan) for _, _, v in values], risk)
                       for k in values[0][2]["scores"]}
        row["aurc_optimal"] = aurc(risk, risk)
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    def f(v, spec="{:.3f}"):
        return "n/a" if v is None or (isinstance(v, float) and v != v) else spec.format(v)

    def ci(r, key):
        if key not in r:
            return ""
        mean, low, high = (f(v, "{:+.3f}") for v in r[key])
        return f"{mean} [{low}, {high}]"

    head = ["method", "sampling", "n", "Dice", "ΔDice vs nnU-Net", "ΔDice vs +budget", "ΔDice vs 2 nnU-Nets", "HD95",
            "lesion F1", "ΔF1 vs nnU-Net", "AVD %", "NFE"]
    lines = [head]
    for r in rows:
        sampler = r["sampler"]
        if r.get("t_prime_per_seed") and sampler.startswith("T' of the sweep"):
            chosen = ", ".join(f"{k}: {v}" for k, v in r["t_prime_per_seed"].items())
            sampler = sampler.replace("T' of the sweep", f"T' of the sweep (seed: T' {chosen})", 1)
        lines.append([r["method"], sampler, str(r["cases"]), f(r["dice"]), ci(r, "delta_dice_vs_nnunet"),
                      ci(r, "delta_dice_vs_more"), ci(r, "delta_dice_vs_ensemble"), f(r["hd95"], "{:.2f}"),
                      f(r["lesion_f1"]), ci(r, "delta_lesion_f1_vs_nnunet"), f(r["avd"], "{:.1f}"),
                      f(r["nfe_per_case"], "{:.0f}")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append("")
    text.append("uncertainty: voxel error-AUROC of each map (higher is better); case-level AURC of each case score "
                "(risk 1 - Dice; lower is better)")
    for r in rows:
        maps = ", ".join(f"{k} {f(v)}" for k, v in r["error_auroc"].items())
        scores = ", ".join(f"{k} {f(v, '{:.4f}')}" for k, v in r["aurc"].items())
        text.append(f"  {r['method']} {r['sampler']}: error-AUROC {maps}; AURC {scores} "
                    f"(optimal {f(r['aurc_optimal'], '{:.4f}')})")
    return "\n".join(text)


def plateau(curve: dict, last: int = 16) -> dict:
    """How flat the validation pseudo Dice is at the end: its least-squares slope per 10 epochs over the last
    ``last`` epochs, and the mean of the last half of them minus the mean of the first half."""
    d = np.asarray(curve["mean_fg_dice"][-last:], dtype=float)
    if len(d) < 2:  # no line through one point; None, not NaN, so refiner.json stays strict JSON
        return {"epochs": len(d), "slope_per_10_epochs": None, "last_half_minus_first_half": None}
    half = len(d) // 2
    return {"epochs": len(d), "slope_per_10_epochs": float(np.polyfit(np.arange(len(d)), d, 1)[0] * 10),
            "last_half_minus_first_half": float(d[half:].mean() - d[:half].mean())}


def plot_curves(curves: dict, path: Path) -> Path:
    """The plateau check drawn: fold 0's validation pseudo Dice (and nnU-Net's EMA of it) per epoch, one colour a
    seed."""
    from nnunet_pdddpm.experiments.report import new_figure, save_figure

    fig, (ax,) = new_figure(1, width=7.0, height=4.0)
    for i, (seed, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        ax.plot(curve["mean_fg_dice"], color=colour, alpha=0.45, linewidth=1, label=f"seed {seed}")
        ax.plot(curve["ema_fg_dice"], color=colour, linewidth=2, label=f"seed {seed}, EMA")
    ax.set_xlabel("epoch (25 iterations)")
    ax.set_ylabel("validation pseudo Dice (fold 0)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, ncol=2)
    return save_figure(fig, path)


def format_curve(curve: dict, every: int) -> str:
    d, e = curve["mean_fg_dice"], curve["ema_fg_dice"]
    epochs = sorted({*range(0, len(d), every), len(d) - 1})
    return ", ".join(f"{i}: {d[i]:.3f} (EMA {e[i]:.3f})" for i in epochs)


def nanmean(values) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


COLUMNS = ("method", "sampler", "seeds", "t_prime_per_seed", "cases", "dice", "hd95", "lesion_f1", "avd",
           "nfe_per_case",
           "delta_dice_vs_nnunet", "delta_dice_vs_more", "delta_dice_vs_ensemble", "delta_lesion_f1_vs_nnunet",
           "error_auroc", "aurc", "aurc_optimal")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup = with_refiner_budget(QUICK if args.quick else FULL, args.refiner_budget, args.refiner_schedule,
                                args.refiner_starts)
    if args.without_paper:
        setup = dataclasses.replace(setup, paper=None)
    if args.folds is not None:
        if args.folds < 2:
            raise SystemExit(f"--folds must be at least 2 (the refiner trains on the other folds' predictions), "
                             f"not {args.folds}.")
        setup = dataclasses.replace(setup, folds=args.folds)
    work = Path(args.output).resolve()
    start = time.perf_counter()
    dataset, env = prepare_dataset(work, setup, args.num_processes)
    if args.device == "cuda":
        env = dict(env, nnUNet_compile=env.get("nnUNet_compile", "false"))  # compiling costs more than it saves here
    train_all(work, args.seeds, dataset, env, setup, args.device, args.jobs)  # first: a rerun reuses them
    if args.train_only:
        return 0
    results, curves = [], {}
    for seed in args.seeds:
        results += score_seed(work, seed, dataset, setup, args.device)
        curves[seed] = learning_curve(work, seed, dataset.name, setup.pre_segmenter)
        curves[seed]["plateau"] = plateau(curves[seed])
    rows = summarise(results)
    wall = time.perf_counter() - start
    print()
    print(format_rows(rows))
    print("\nnnU-Net fold 0 validation pseudo Dice per epoch (plateau check):")
    for seed, curve in curves.items():
        print(f"  seed {seed}: {format_curve(curve, max(1, len(curve['mean_fg_dice']) // 8))}")
        flat = curve["plateau"]
        if flat["slope_per_10_epochs"] is None:
            print(f"    {flat['epochs']} epoch: too few for a plateau check")
            continue
        print(f"    last {flat['epochs']} epochs: slope {flat['slope_per_10_epochs']:+.4f} per 10 epochs, last half "
              f"minus first half {flat['last_half_minus_first_half']:+.4f}")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    print(f"\nseeds {args.seeds}; n = seeds x test cases; wall time {wall / 60:.1f} min (this run; trainings and "
          f"samples found in the work folder are reused); {os.cpu_count()} CPU cores" + (f", {gpu}" if gpu else ""))
    meta = {"command": " ".join(["python -m benchmarks.benchmark_refiner", *(argv or sys.argv[1:])]),
            "wall_time_s": wall, "cpu_cores": os.cpu_count(), "gpu": gpu, "seeds": args.seeds,
            "learning_curves": curves,
            "setup": {k: v for k, v in setup.__dict__.items() if k != "dataset"}, "per_case": results}
    write_rows([{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows],
               COLUMNS, work / f"refiner{setup.tag}.csv")
    write_json_atomic({**meta, "rows": rows}, work / f"refiner{setup.tag}.json", strict=True)
    print(f"learning curves: {plot_curves(curves, work / f'learning_curves{setup.tag}.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
