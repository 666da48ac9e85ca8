"""Does PD-DDPM improve on the segmentation it starts from? Side by side, at fixed budgets, over seeds.

On a WMH-like set from the demo's generator: pre-segmenters (plain nnU-Net and the attention U-Net) and
denoisers (the paper's recipe and the training options of ``PDDDPMTrainer``) are trained through the real
``nnUNetv2_train`` with fixed iteration budgets, each seed in its own ``nnUNet_results`` (training seeded
through ``nnunet_pdddpm_seed``). Every (pre-segmenter, denoiser) pair is sampled on the same test cases;
a pre-segmenter's own row uses its softmax as the uncertainty map (p(1-p), the Bernoulli variance: the
baseline a user already has). Per case: Dice, HD95, lesion F1, AVD, and the error-AUROC of the uncertainty
map (does it point at the voxels that method got wrong); PD-DDPM is scored with two maps of one ensemble,
the paper's variance and the entropy of the mean. Differences against the pre-segmenter are paired over
(seed, case) with bootstrap 95 % intervals, and so are PD-DDPM's Dice differences against plain nnU-Net
trained with the pre-segmenter's and the denoiser's training samples together (the same budget).
A denoiser trained on its pre-segmenter's predictions is sampled from that pre-segmenter only; for one trained
on out-of-fold predictions (``_oof``) the pre-segmenter's folds 1-4 are trained first (with ``--quick`` the tiny set
is split into two folds, so fold 1 only).

    python -m benchmarks.benchmark_fidelity -o WORK          # documented table (3 seeds: ~1.5 h alone, 2 cores)
    python -m benchmarks.benchmark_fidelity -o WORK --seeds 0 --denoisers PDDDPMTrainer_demoCPU_x0 ...
    python -m benchmarks.benchmark_fidelity -o WORK --quick               # the tiny set and models, two folds (tests)

Everything is reused from WORK on a rerun (dataset, preprocessing, trained models, sampled cases), so
several invocations with other lists share their work. Output: a table, ``WORK/fidelity.json`` (rows and
per-case values) and ``WORK/fidelity.csv``.
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

from nnunet_pdddpm.demo.commands import nnunet_environment, run_command
from nnunet_pdddpm.demo.dataset import DemoProfile, make_demo_dataset
from nnunet_pdddpm.demo.run_profiles import CPU_DATASET
from nnunet_pdddpm.evaluation.paired import paired_difference
from nnunet_pdddpm.experiments.report import write_rows
from nnunet_pdddpm.inference.settings import PerformanceSettings
from nnunet_pdddpm.inference.uncertainty import predictive_entropy
from nnunet_pdddpm.io_utils import write_json_atomic
from nnunet_pdddpm.trainers.seeding import SEED_VARIABLE

PER_CASE_METRICS = ("dice", "hd95", "lesion_f1", "avd", "uncertainty_auroc")
PAIRED_METRICS = ("dice", "lesion_f1")
# PD-DDPM's uncertainty map: the paper's variance across the ensemble, and the predictive entropy of its mean
# (the same segmentation: one ensemble, two maps; the entropy of the aggregated mean, which differs from
# -uncertainty entropy's per-patch aggregation only where patches overlap)
UNCERTAINTIES = ("variance", "entropy")


@dataclass(frozen=True)
class Setup:
    """What one invocation trains and samples."""

    dataset: DemoProfile | str
    dataset_id: int
    dataset_name: str
    pre_segmenters: tuple[str, ...]
    denoisers: tuple[str, ...]
    t_prime: int
    steps: int
    ensemble_size: int
    samplers: tuple[str, ...]
    yardstick: str | None = None  # plain nnU-Net trained with the pre-segmenter's and the denoiser's budget together
    starts: tuple[str, ...] = ("hard",)  # x_pre: the pre-segmenter's argmax ("hard") or its probabilities ("soft")
    folds: int = 5  # nnU-Net's cross-validation folds; another number is written as the dataset's splits_final.json


# the CPU demo's images (16 training cases), with 12 test cases instead of 4
FULL = Setup(dataclasses.replace(CPU_DATASET, num_test=12, name="fidelity"), 988, "PDDDPMFidelity",
             ("nnUNetTrainer_demoCPU", "PDDDPMAttUNetTrainer_demoCPU"),
             ("PDDDPMTrainer_demoCPU", "PDDDPMTrainer_demoCPU_preseg"), 300, 5, 3, ("ddim",),
             "nnUNetTrainer_demoCPU_long")
# two folds: an out-of-fold denoiser needs one other fold's network, not four more trainings
QUICK = Setup("tiny", 984, "PDDDPMFidelityTiny", ("PDDDPMAttUNetTrainer_tiny",),
              ("PDDDPMTrainer_tiny", "PDDDPMTrainer_tiny_preseg"), 20, 2, 2, ("ddim",), folds=2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, help="Work folder (reused by later runs).")
    p.add_argument("--quick", action="store_true", help="The demo's tiny dataset and the _tiny trainers (minutes).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Training seeds (default: 0 1 2).")
    p.add_argument("--pre_segmenters", nargs="+", help="Pre-segmenter trainers (default: plain nnU-Net and the "
                                                        "attention U-Net at the CPU demo's budget).")
    p.add_argument("--denoisers", nargs="+", help="Denoiser trainers (default: the paper's recipe and _preseg).")
    p.add_argument("--t_prime", type=int, help="T' of PD-DDPM (default 300, the paper's; quick 20).")
    p.add_argument("--steps", type=int, help="Steps of the fast samplers from T' (default 5; quick 2).")
    p.add_argument("--ensemble", type=int, help="Ensemble size (default 3; quick 2).")
    p.add_argument("--samplers", nargs="+", choices=("ddim", "dpm++", "ddpm"),
                   help="Samplers (default: ddim); ddpm runs every step from T'.")
    p.add_argument("--yardstick", help="Plain nnU-Net trainer at PD-DDPM's total training budget, compared with every "
                                       "PD-DDPM row (default nnUNetTrainer_demoCPU_long; 'none' for none).")
    p.add_argument("--starts", nargs="+", choices=("hard", "soft"), default=["hard"],
                   help="Diffuse the pre-segmenter's argmax (hard, the paper) and/or its probabilities as 2p - 1 "
                        "(soft, --soft_pre_segmentation of predict) (default: hard).")
    p.add_argument("-np", "--num_processes", type=int, default=1, help="nnU-Net worker processes (default 1).")
    return p


def resolve(args) -> Setup:
    base = QUICK if args.quick else FULL
    return Setup(base.dataset, base.dataset_id, base.dataset_name,
                 tuple(args.pre_segmenters or base.pre_segmenters), tuple(args.denoisers or base.denoisers),
                 args.t_prime or base.t_prime, args.steps or base.steps, args.ensemble or base.ensemble_size,
                 tuple(args.samplers or base.samplers),
                 None if args.yardstick == "none" else (args.yardstick or base.yardstick), tuple(args.starts),
                 base.folds)


def prepare_dataset(work: Path, setup: Setup, num_processes: int) -> tuple[Path, dict]:
    raw, pre = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    folder = make_demo_dataset(raw, setup.dataset, dataset_id=setup.dataset_id, dataset_name=setup.dataset_name,
                               num_processes=num_processes)
    env = nnunet_environment(raw, pre, work / "results_seed0", num_processes, "cpu")
    if not (pre / folder.name / "nnUNetPlans.json").is_file() or not (pre / folder.name / "nnUNetPlans_2d").is_dir():
        run_command(["nnUNetv2_plan_and_preprocess", "-d", str(setup.dataset_id), "-c", "2d", "-np",
                     str(num_processes), "-npfp", str(num_processes)], env, work / "logs" / "plan.log")
    if setup.folds != 5:
        write_splits(folder, pre / folder.name / "splits_final.json", setup.folds)
    return folder, env


def write_splits(raw_dataset: Path, splits_file: Path, folds: int) -> None:
    """nnU-Net's own random split of the training cases into ``folds`` folds, as ``splits_final.json`` (which
    nnU-Net's trainers then use instead of their five); a work folder split otherwise is refused."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder

    if splits_file.is_file():
        if len(json.loads(splits_file.read_text())) != folds:
            raise SystemExit(f"{splits_file} does not have {folds} folds; use a new work folder (-o).")
        return
    file_ending = json.loads((raw_dataset / "dataset.json").read_text())["file_ending"]
    cases = get_identifiers_from_splitted_dataset_folder(str(raw_dataset / "imagesTr"), file_ending).tolist()
    write_json_atomic(generate_crossval_split(cases, n_splits=folds), splits_file)


def results_folder(work: Path, seed: int) -> Path:
    return work / f"results_seed{seed}"


def model_folder(work: Path, seed: int, dataset: str, trainer: str) -> Path:
    return results_folder(work, seed) / dataset / f"{trainer}__nnUNetPlans__2d"


def train(work: Path, setup: Setup, dataset: str, env: dict, seed: int, trainer: str, fold: int = 0,
          device: str = "cpu") -> float | None:
    """``nnUNetv2_train`` of ``fold`` with seed ``seed`` on ``device`` (skipped when its final checkpoint exists)."""
    folder = model_folder(work, seed, dataset, trainer) / f"fold_{fold}"
    if (folder / "checkpoint_final.pth").is_file():
        return None
    env = dict(env, nnUNet_results=str(results_folder(work, seed)), **{SEED_VARIABLE: str(seed)})
    resume = ["--c"] if (folder / "checkpoint_latest.pth").is_file() else []
    sys.stdout.write(f"seed {seed}: training {trainer}" + (f" fold {fold}" if fold else "") + "\n")  # one write:
    sys.stdout.flush()  # trainings may run in parallel threads
    log = work / "logs" / (f"train_seed{seed}_{trainer}" + ("" if fold == 0 else f"_fold{fold}") + ".log")
    return run_command(["nnUNetv2_train", str(setup.dataset_id), "2d", str(fold), "-tr", trainer, "-device", device,
                        *resume], env, log, indent="      ")


def extra_pre_segmenter_folds(denoiser: str, pre_segmenters: tuple[str, ...], folds: int = 5) -> list[tuple[str, int]]:
    """(pre-segmenter, fold) pairs an out-of-fold denoiser needs besides fold 0: every other fold of each
    pre-segmenter it trains with (each training case is segmented by the fold that held it out)."""
    import nnunet_pdddpm.trainers as trainers

    cls = getattr(trainers, denoiser, None)
    if cls is None or getattr(cls, "pre_segmentation_source", "simulated") != "out_of_fold":
        return []
    return [(p, f) for p in pre_segmenters if p in cls.pre_segmenter_trainers for f in range(1, folds)]


def per_case(runner, name: str) -> dict[str, dict[str, float]]:
    """{case: {metric: value}} of the foreground label of an evaluated setting (``runner.evaluate`` wrote it)."""
    summary = json.loads((runner.output / "evaluation" / f"{name}.json").read_text())
    label = str(summary["labels"][0])
    return {c["case"]: {m: c["metrics"][label].get(m, float("nan")) for m in PER_CASE_METRICS}
            for c in summary["metric_per_case"]}


def sample_pair(work: Path, seed: int, dataset: Path, pre_segmenter: str, denoiser: str, setup: Setup) -> list[dict]:
    """Rows (one per sampler, plus the pre-segmenter's own) with per-case values for one model pair."""
    from nnunet_pdddpm.experiments.runner import ExperimentRunner, ModelSelection

    models = ModelSelection(str(model_folder(work, seed, dataset.name, denoiser)),
                            str(model_folder(work, seed, dataset.name, pre_segmenter)), folds=(0,), device="cpu",
                            performance=PerformanceSettings(max_batch_size=32))
    out = work / "sampling" / f"seed{seed}" / pre_segmenter / denoiser
    runner = ExperimentRunner(models, dataset / "imagesTs", dataset / "labelsTs", out, verbose=False)
    pre = runner.pre_segmentation()
    rows = [softmax_row(runner, pre)]
    for sampler, start in ((sampler, start) for sampler in setup.samplers for start in setup.starts):
        steps = None if sampler == "ddpm" else setup.steps
        settings = runner.settings(t_prime=setup.t_prime, ensemble_size=setup.ensemble_size, sampler=sampler,
                                   steps=steps, uncertainty="variance", soft_pre_segmentation=start == "soft")
        settings = dataclasses.replace(settings, steps=steps)  # (None, "every step", is not an override)
        stem = f"pdddpm_{sampler}" + ("" if start == "hard" else "_soft")
        names = {u: stem + ("" if u == "variance" else f"_{u}") for u in UNCERTAINTIES}
        for name in names.values():
            forget_other_settings(runner.folder(name), settings)
        todo = sorted({c for name in names.values() for c in runner.pending_cases(name, settings)})
        for case in todo:  # one ensemble, both maps
            result, nfe, seconds = runner.sample(case, settings, pre)
            maps = {"variance": result.uncertainty, "entropy": predictive_entropy(result.probabilities)}
            for u, name in names.items():
                runner.export(name, case, result.probabilities, maps[u], nfe, seconds)
        for u, name in names.items():
            run = runner.evaluate(name)
            rows.append({"method": f"PD-DDPM ({u})", "sampler": f"{sampler} {steps or setup.t_prime} steps"
                                                                 + ("" if start == "hard" else ", soft start"),
                         "nfe": run.nfe_per_case, "seconds": run.seconds_per_case, "cases": per_case(runner, name)})
    return rows


def softmax_row(runner, pre, method: str = "pre-segmenter (softmax uncertainty)") -> dict:
    """A segmenter on its own, its softmax p(1-p) as the uncertainty map (the baseline a user already has)."""
    if not (runner.output / "evaluation" / "pre_segmenter.json").is_file():
        for case in runner.cases:
            data, properties = runner.case_data(case)
            probs = pre.probabilities(data, properties, case)
            softmax_uncertainty = (probs * (1 - probs)).mean(0)  # binary: p(1-p), the Bernoulli variance
            runner.export("pre_segmenter", case, probs, softmax_uncertainty, pre.nfe[case], pre.seconds[case])
        runner.evaluate("pre_segmenter")
    return {"method": method, "sampler": "", "nfe": pre_run_nfe(runner), "cases": per_case(runner, "pre_segmenter")}


def yardstick_row(work: Path, seed: int, dataset: Path, setup: Setup) -> dict:
    """The same-budget plain nnU-Net's row (evaluated like a pre-segmenter; the runner needs some denoiser)."""
    from nnunet_pdddpm.experiments.runner import ExperimentRunner, ModelSelection

    models = ModelSelection(str(model_folder(work, seed, dataset.name, setup.denoisers[0])),
                            str(model_folder(work, seed, dataset.name, setup.yardstick)), folds=(0,), device="cpu")
    runner = ExperimentRunner(models, dataset / "imagesTs", dataset / "labelsTs",
                              work / "sampling" / f"seed{seed}" / setup.yardstick, verbose=False)
    return softmax_row(runner, runner.pre_segmentation(), YARDSTICK_METHOD)


YARDSTICK_METHOD = "plain nnU-Net, PD-DDPM's total budget (softmax uncertainty)"


def forget_other_settings(folder: Path, settings) -> None:
    """Cases in ``folder`` sampled with other settings (another --t_prime, say) are deleted, not reused."""
    import shutil

    key = {k: settings.to_dict()[k] for k in ("t_prime", "ensemble_size", "sampler", "steps", "seed")}
    if settings.soft_pre_segmentation:  # (absent for hard starts: folders of earlier runs stay valid)
        key["soft_pre_segmentation"] = True
    record = folder / "benchmark_settings.json"
    if record.is_file() and json.loads(record.read_text()) != key:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(key, record)


def pairs_with(denoiser: str, pre_segmenter: str) -> bool:
    """A denoiser trained on a pre-segmenter's own predictions is sampled only from the pre-segmenters it trained
    with (``pre_segmenter_trainers``); every other denoiser from every pre-segmenter."""
    import nnunet_pdddpm.trainers as trainers

    cls = getattr(trainers, denoiser, None)
    if cls is None or getattr(cls, "pre_segmentation_source", "simulated") not in ("pre_segmenter", "out_of_fold"):
        return True
    return pre_segmenter in cls.pre_segmenter_trainers


def pre_run_nfe(runner) -> float:
    log = json.loads((runner.folder("pre_segmenter") / "pdddpm_cases.json").read_text())
    return float(np.mean([c["nfe"] for c in log.values()]))


def summarise(results: list[dict]) -> list[dict]:
    """One row per (pre-segmenter, denoiser, sampler): means over seeds x cases and paired differences."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["pre_segmenter"], r["denoiser"], r["method"], r["sampler"]), []).append(r)
    baselines = {(r["pre_segmenter"], r["seed"]): r["cases"] for r in results if not r["method"].startswith("PD-")}
    yardsticks = {r["seed"]: r["cases"] for r in results if r["method"] == YARDSTICK_METHOD}
    rows = []
    for (pre_seg, denoiser, method, sampler), runs in groups.items():
        is_pre = not method.startswith("PD-")
        pairs = [(baselines[(pre_seg, r["seed"])][c], v) for r in runs for c, v in r["cases"].items()]
        row = {"pre_segmenter": pre_seg, "denoiser": "" if is_pre else denoiser, "method": method,
               "sampler": sampler, "seeds": len(runs), "cases": len(pairs),
               "nfe_per_case": float(np.mean([r["nfe"] for r in runs]))}
        for m in PER_CASE_METRICS:
            row[m] = float(np.nanmean([v[m] for _, v in pairs])) if pairs else float("nan")
        for m in PAIRED_METRICS:
            d = paired_difference([a[m] for a, _ in pairs], [b[m] for _, b in pairs])
            row[f"delta_{m}"], row[f"delta_{m}_low"], row[f"delta_{m}_high"] = d["mean"], d["low"], d["high"]
        if not is_pre and yardsticks and all(r["seed"] in yardsticks for r in runs):
            same = [(yardsticks[r["seed"]][c]["dice"], v["dice"]) for r in runs for c, v in r["cases"].items()]
            d = paired_difference([a for a, _ in same], [b for _, b in same])
            row["delta_dice_budget"], row["delta_dice_budget_low"], row["delta_dice_budget_high"] = (
                d["mean"], d["low"], d["high"])
        rows.append(row)
    return rows


COLUMNS = ("pre_segmenter", "denoiser", "method", "sampler", "seeds", "cases", "dice", "delta_dice", "delta_dice_low",
           "delta_dice_high", "hd95", "lesion_f1", "delta_lesion_f1", "delta_lesion_f1_low", "delta_lesion_f1_high",
           "avd", "uncertainty_auroc", "nfe_per_case", "delta_dice_budget", "delta_dice_budget_low",
           "delta_dice_budget_high")


def format_rows(rows: list[dict]) -> str:
    def f(v, spec="{:.3f}"):
        return "n/a" if v is None or (isinstance(v, float) and v != v) else spec.format(v)

    head = ["pre-segmenter", "denoiser", "method", "sampler", "n", "Dice", "ΔDice [95% CI]", "HD95", "lesion F1",
            "ΔF1 [95% CI]", "AVD %", "err-AUROC", "NFE", "ΔDice vs same-budget nnU-Net"]
    lines = [head]
    for r in rows:
        pre = not r["method"].startswith("PD-")

        def ci(m: str) -> str:
            if pre or f"delta_{m}" not in r:
                return ""
            return (f"{f(r[f'delta_{m}'], '{:+.3f}')} [{f(r[f'delta_{m}_low'], '{:+.3f}')}, "
                    f"{f(r[f'delta_{m}_high'], '{:+.3f}')}]")
        lines.append([r["pre_segmenter"], r["denoiser"], r["method"], r["sampler"], str(r["cases"]), f(r["dice"]),
                      ci("dice"), f(r["hd95"], "{:.2f}"), f(r["lesion_f1"]), ci("lesion_f1"), f(r["avd"], "{:.1f}"),
                      f(r["uncertainty_auroc"]), f(r["nfe_per_case"], "{:.0f}"), ci("dice_budget")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup = resolve(args)
    work = Path(args.output).resolve()
    start = time.perf_counter()
    dataset, env = prepare_dataset(work, setup, args.num_processes)
    results = []
    for seed in args.seeds:
        for trainer in (*setup.pre_segmenters, *([setup.yardstick] if setup.yardstick else []), *setup.denoisers):
            for pre_segmenter, fold in extra_pre_segmenter_folds(trainer, setup.pre_segmenters, setup.folds):
                train(work, setup, dataset.name, env, seed, pre_segmenter, fold)
            train(work, setup, dataset.name, env, seed, trainer)
        if setup.yardstick:
            results.append({"seed": seed, "pre_segmenter": setup.yardstick, "denoiser": "",
                            **yardstick_row(work, seed, dataset, setup)})
        for pre_segmenter in setup.pre_segmenters:
            for denoiser in setup.denoisers:
                if not pairs_with(denoiser, pre_segmenter):
                    continue
                print(f"seed {seed}: sampling {denoiser} from {pre_segmenter}", flush=True)
                for row in sample_pair(work, seed, dataset, pre_segmenter, denoiser, setup):
                    baseline = row["method"].startswith("pre-seg")
                    if baseline and any(r["seed"] == seed and r["pre_segmenter"] == pre_segmenter
                                        and r["method"] == row["method"] for r in results):
                        continue  # the pre-segmenter's own row does not depend on the denoiser: keep one
                    results.append({"seed": seed, "pre_segmenter": pre_segmenter,
                                    "denoiser": "" if baseline else denoiser, **row})
    rows = summarise(results)
    wall = time.perf_counter() - start
    print()
    print(format_rows(rows))
    print(f"\nseeds {args.seeds}; n = seeds x test cases; T'={setup.t_prime}, ensemble {setup.ensemble_size}; "
          f"wall time {wall / 60:.1f} min; {os.cpu_count()} CPU cores")
    meta = {"command": " ".join(["python -m benchmarks.benchmark_fidelity", *(argv or sys.argv[1:])]),
            "wall_time_s": wall, "cpu_cores": os.cpu_count(), "setup": {k: v for k, v in setup.__dict__.items()
                                                                         if k != "dataset"},
            "seeds": args.seeds, "per_case": results}
    write_rows(rows, COLUMNS, work / "fidelity.csv")
    write_json_atomic({**meta, "rows": rows}, work / "fidelity.json", strict=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
