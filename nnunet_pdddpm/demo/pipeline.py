"""``nnunet_pdddpm_demo``: the whole method on a fresh machine, without any download.

Stages: (1) a synthetic WMH dataset, (2) ``nnUNetv2_plan_and_preprocess``, (3) the pre-segmenter (plain
nnU-Net; the gpu profile: the paper's attention U-Net) and (4) the denoiser trained with ``nnUNetv2_train``,
(5) the pre-segmenter alone on the test cases with ``nnUNetv2_predict``, (6) PD-DDPM (and, in the gpu profile,
vanilla DDPM) on the same cases (the in-process :class:`ExperimentRunner`, so cost per case is measured), (7) the
WMH metrics of each, one table (console, JSON, CSV) and figures.

Everything lives under one work folder (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``, ``predictions/``, ``evaluation/``, ``report/``, ``logs/``). A rerun skips
what is complete: the dataset, the preprocessing, a training with ``checkpoint_final.pth``
(an interrupted one continues with ``--c``), and predicted cases.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import time
from pathlib import Path

import numpy as np

from nnunet_pdddpm.demo.commands import nnunet_environment, run_command
from nnunet_pdddpm.demo.dataset import make_demo_dataset
from nnunet_pdddpm.demo.figures import case_figure
from nnunet_pdddpm.demo.run_profiles import RUN_PROFILES, DemoRunProfile
from nnunet_pdddpm.experiments import table1
from nnunet_pdddpm.experiments.common import describe
from nnunet_pdddpm.experiments.report import format_table, write_rows
from nnunet_pdddpm.io_utils import write_json_atomic
from nnunet_pdddpm.trainers.seeding import SEED_VARIABLE

NUM_STAGES = 7
PLANS = "nnUNetPlans"
COLUMNS = ("method", "dice", "hd95", "jaccard", "lesion_f1", "uncertainty_auroc", "mean_uncertainty", "nfe_per_case",
           "seconds_per_case", "sampling")
METHOD_FOLDERS = {"pre-segmenter": "pre_segmenter", "vanilla DDPM": "vanilla_ddpm", "PD-DDPM": "pd_ddpm"}


def method_folders(profile: DemoRunProfile) -> dict[str, str]:
    """The methods of a profile's table and their prediction folders: vanilla DDPM only where the profile samples it
    (a refiner is trained on t < T' only, so sampling from noise is not a method of its)."""
    return {m: f for m, f in METHOD_FOLDERS.items() if m != "vanilla DDPM" or profile.vanilla is not None}


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where everything of one demo lives."""

    workdir: Path
    dataset: str

    raw = property(lambda self: self.workdir / "nnUNet_raw")
    preprocessed = property(lambda self: self.workdir / "nnUNet_preprocessed")
    results = property(lambda self: self.workdir / "nnUNet_results")
    report = property(lambda self: self.workdir / "report")
    logs = property(lambda self: self.workdir / "logs")
    images = property(lambda self: self.raw / self.dataset / "imagesTs")
    labels = property(lambda self: self.raw / self.dataset / "labelsTs")

    def model(self, trainer: str, configuration: str) -> Path:
        return self.results / self.dataset / f"{trainer}__{PLANS}__{configuration}"

    def predictions(self, method_folder: str) -> Path:
        return self.workdir / "predictions" / method_folder


def run_demo(workdir: str | os.PathLike = "pdddpm_demo", profile: str | DemoRunProfile = "cpu",
             device: str | None = None, num_processes: int = 1, num_figures: int = 3, seed: int = 0) -> dict:
    """Run (or finish) the demo in ``workdir``; returns the report (also in ``workdir/report/results.json``).

    ``seed`` seeds both trainings (``nnunet_pdddpm_seed``) and the sampling.
    """
    start = time.perf_counter()
    profile = RUN_PROFILES[profile] if isinstance(profile, str) else profile
    device = device or profile.device
    paths = DemoPaths(Path(workdir).expanduser().resolve(), f"Dataset{profile.dataset_id:03d}_{profile.dataset_name}")
    env = nnunet_environment(paths.raw, paths.preprocessed, paths.results, num_processes, device)
    env[SEED_VARIABLE] = str(seed)
    timings_file = paths.report / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    this_run: dict[str, float | None] = {}

    def record(stage: str, seconds: float | None, **extra) -> None:
        this_run[stage] = seconds
        if seconds is not None:
            timings[stage] = {"seconds": seconds, **extra}
            write_json_atomic(timings, timings_file)

    print(f"PD-DDPM demo, profile '{profile.name}' on {device}, seed {seed}, in {paths.workdir}", flush=True)
    _stage(1, "demo dataset (synthetic FLAIR + T1 with white-matter hyperintensities)")
    t = time.perf_counter()
    make_demo_dataset(paths.raw, profile.dataset, dataset_id=profile.dataset_id,
                      dataset_name=profile.dataset_name, num_processes=num_processes)
    record("dataset", time.perf_counter() - t)

    _stage(2, f"nnU-Net planning and preprocessing ({profile.configuration})")
    if _preprocessed(paths, profile.configuration):
        print("  already preprocessed; skipped")
        record("preprocessing", None)
    else:
        record("preprocessing", run_command(
            ["nnUNetv2_plan_and_preprocess", "-d", str(profile.dataset_id), "-c", profile.configuration,
             "-np", str(num_processes), "-npfp", str(num_processes)],
            env, paths.logs / "plan_and_preprocess.log"))

    for number, what, trainer in ((3, "pre-segmenter", profile.pre_segmenter_trainer),
                                  (4, "denoiser", profile.denoiser_trainer)):
        _stage(number, f"training the {what} ({trainer}, fold {profile.fold})")
        record(f"training {what}", _train(paths, profile, trainer, device, env))

    _stage(5, f"pre-segmenter alone on the test cases (nnUNetv2_predict -tr {profile.pre_segmenter_trainer})")
    seconds, cases = _predict_pre_segmenter(paths, profile, device, num_processes, env)
    record("prediction pre-segmenter", seconds, cases=cases)

    _stage(6, " and ".join(m for m in method_folders(profile) if m != "pre-segmenter") + " on the test cases")
    t = time.perf_counter()
    runner, settings, sampled = _diffusion_runs(paths, profile, device, seed)
    record("prediction diffusion", time.perf_counter() - t if sampled else None)

    _stage(7, "evaluation, table and figures")
    rows = _rows(runner, settings, timings.get("prediction pre-segmenter", {}), paths, method_folders(profile))
    report = _write_report(paths, profile, device, rows, runner, num_figures, settings["PD-DDPM"].uncertainty)
    wall = time.perf_counter() - start
    summary = summary_line(rows, runner.predictor.t_prime_source)
    report.update(wall_time_s=wall, stage_seconds_this_run=this_run, seed=seed, summary=summary,
                  stage_seconds={k: v["seconds"] for k, v in timings.items()})
    write_json_atomic(report, paths.report / "results.json", strict=True)
    print()
    print(format_table(rows, COLUMNS))
    print(f"\n{summary}")
    print(f"{profile.note}")
    reused = [stage for stage, s in this_run.items() if s is None]
    print(f"\nReport: {paths.report / 'results.json'}, results.csv and figures/*.png")
    print(f"Wall time of this run: {_minutes(wall)}" + (f" (reused: {', '.join(reused)})" if reused else ""))
    return report


def _stage(number: int, text: str) -> None:
    print(f"\n[{number}/{NUM_STAGES}] {text}", flush=True)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s ({seconds:.0f} s)"


def _preprocessed(paths: DemoPaths, configuration: str) -> bool:
    """Plans exist and every training case of ``configuration`` is preprocessed."""
    plans_file = paths.preprocessed / paths.dataset / f"{PLANS}.json"
    if not plans_file.is_file():
        return False
    configurations = json.loads(plans_file.read_text())["configurations"]
    if configuration not in configurations:
        return False
    folder = paths.preprocessed / paths.dataset / configurations[configuration]["data_identifier"]
    num_training = json.loads((paths.raw / paths.dataset / "dataset.json").read_text())["numTraining"]
    return folder.is_dir() and len(list(folder.glob("*.pkl"))) >= num_training


def _train(paths: DemoPaths, profile: DemoRunProfile, trainer: str, device: str, env: dict) -> float | None:
    fold = paths.model(trainer, profile.configuration) / f"fold_{profile.fold}"
    if (fold / "checkpoint_final.pth").is_file():
        print(f"  {fold / 'checkpoint_final.pth'} exists; skipped")
        return None
    resume = ["--c"] if (fold / "checkpoint_latest.pth").is_file() else []  # an interrupted run continues
    if resume:
        print(f"  continuing the interrupted training from {fold / 'checkpoint_latest.pth'}")
    return run_command(["nnUNetv2_train", str(profile.dataset_id), profile.configuration, str(profile.fold),
                        "-tr", trainer, "-device", device, *resume], env, paths.logs / f"train_{trainer}.log")


def _test_cases(paths: DemoPaths) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in paths.labels.glob("*.nii.gz"))


def _predict_pre_segmenter(paths: DemoPaths, profile: DemoRunProfile, device: str, num_processes: int,
                           env: dict) -> tuple[float | None, int]:
    out = paths.predictions(METHOD_FOLDERS["pre-segmenter"])
    todo = [c for c in _test_cases(paths) if not (out / f"{c}.nii.gz").is_file() or not (out / f"{c}.npz").is_file()]
    if not todo:
        print("  every test case is predicted; skipped")
        return None, 0
    seconds = run_command(
        ["nnUNetv2_predict", "-i", str(paths.images), "-o", str(out), "-d", str(profile.dataset_id),
         "-c", profile.configuration, "-tr", profile.pre_segmenter_trainer, "-f", str(profile.fold),
         "-device", device, "-npp", str(num_processes), "-nps", str(num_processes), "--continue_prediction",
         "--save_probabilities", "--disable_progress_bar"], env, paths.logs / "predict_pre_segmenter.log")
    return seconds, len(todo)


def _diffusion_runs(paths: DemoPaths, profile: DemoRunProfile, device: str, seed: int):
    """Vanilla DDPM and PD-DDPM into ``predictions/``, resuming; returns the runner, both settings, and whether
    any case was sampled."""
    from nnunet_pdddpm.experiments.runner import ExperimentRunner, ModelSelection
    from nnunet_pdddpm.inference.settings import PerformanceSettings

    models = ModelSelection(
        denoiser_folder=str(paths.model(profile.denoiser_trainer, profile.configuration)),
        pre_segmenter_folder=str(paths.model(profile.pre_segmenter_trainer, profile.configuration)),
        folds=(profile.fold,), device=device, performance=PerformanceSettings(max_batch_size=profile.max_batch_size))
    runner = ExperimentRunner(models, paths.images, paths.labels, paths.workdir)
    base = dataclasses.replace(runner.defaults, seed=seed)
    # t_prime None: the T' of the denoiser's validation sweep (runner.defaults), as nnunet_pdddpm_predict does
    pd_ddpm = {k: v for k, v in profile.pd_ddpm.items() if not (k == "t_prime" and v is None)}
    settings = {"PD-DDPM": dataclasses.replace(base, **pd_ddpm)}
    if profile.vanilla is not None:
        # with_overrides drops a stored fusion (no pre-segmentation to mix in); replace keeps "steps": None
        vanilla = dataclasses.replace(base.with_overrides(vanilla=True), **profile.vanilla)
        settings = {"vanilla DDPM": vanilla, **settings}
    common = ["-i", str(paths.images), "-d", str(profile.dataset_id), "-c", profile.configuration,
              "-tr", profile.denoiser_trainer, "-f", str(profile.fold), "-device", device]
    sampled = False
    for method, s in settings.items():
        runner.predictor.check_settings(s)
        sampled = sampled or bool(runner.pending_cases(METHOD_FOLDERS[method], s))
        flags = ["-ensemble_size", str(s.ensemble_size), "-sampler", s.sampler, "-seed", str(seed)]
        flags += ["-steps", str(s.steps)] if s.steps else []
        flags += ["--vanilla"] if s.vanilla else ["-preseg_tr", profile.pre_segmenter_trainer]
        flags += ["-t_prime", str(s.t_prime)] if "t_prime" in pd_ddpm and not s.vanilla else []
        print(f"  {method} ({describe(s, runner.predictor.diffusion_config.num_train_timesteps)}); the same as:\n"
              f"  $ {shlex.join(['nnunet_pdddpm_predict', *common, '-o', 'OUT', *flags])}", flush=True)
        pre = None if s.vanilla else runner.pre_segmentation()
        runner.run_setting(METHOD_FOLDERS[method], s, pre, resume=True)
    return runner, settings, sampled


def _rows(runner, settings: dict, pre_timing: dict, paths: DemoPaths, folders: dict[str, str]) -> list[dict]:
    """One table row per method; the pre-segmenter's cost comes from nnUNetv2_predict's wall time, and its
    uncertainty map is its softmax's p(1 - p) (the baseline a user already has)."""
    T = runner.predictor.diffusion_config.num_train_timesteps
    rows = []
    for method, folder in folders.items():
        run = runner.evaluate(folder)
        row = {"method": method, **run.metrics, "nfe_per_case": run.nfe_per_case,
               "seconds_per_case": run.seconds_per_case}
        if method == "pre-segmenter":
            row.update(softmax_uncertainty_metrics(paths, runner.predictor.label_manager.foreground_labels))
            cases = json.loads((runner.folder("pd_ddpm") / "pdddpm_cases.json").read_text()).values()
            row["nfe_per_case"] = float(np.mean([c["pre_segmentation_nfe"] for c in cases]))
            cases_timed = pre_timing.get("cases", 0)
            row["seconds_per_case"] = pre_timing["seconds"] / cases_timed if cases_timed else math.nan
            row["sampling"] = "nnUNetv2_predict with test-time mirroring (s/case includes start-up)"
        else:
            row["sampling"] = describe(settings[method], T)
        rows.append(row)
    return rows


def softmax_uncertainty_metrics(paths: DemoPaths, labels) -> dict:
    """Error-AUROC and mean of the pre-segmenter's softmax uncertainty p(1 - p) (from its ``--save_probabilities``
    npz files), written as ``uncertainty/CASE_uncertainty.nii.gz`` maps beside its segmentations."""
    import SimpleITK as sitk

    from nnunet_pdddpm.evaluation import evaluate_folders
    from nnunet_pdddpm.io_utils import atomic_path

    folder = paths.predictions(METHOD_FOLDERS["pre-segmenter"])
    unc = folder / "uncertainty"
    unc.mkdir(parents=True, exist_ok=True)
    for case in _test_cases(paths):
        target = unc / f"{case}_uncertainty.nii.gz"
        if target.is_file():
            continue
        probs = np.load(folder / f"{case}.npz")["probabilities"].astype(np.float32)  # (K, z, y, x) as SimpleITK
        image = sitk.GetImageFromArray((probs * (1 - probs)).mean(0))
        image.CopyInformation(sitk.ReadImage(str(folder / f"{case}.nii.gz")))
        with atomic_path(target) as tmp:
            sitk.WriteImage(image, tmp)
    summary = evaluate_folders(paths.labels, folder, unc_dir=unc, labels=labels, show_progress=False)
    means = list(summary["mean"].values())
    return {k: float(np.nanmean([m[k] for m in means])) for k in ("uncertainty_auroc", "mean_uncertainty")}


#: a Dice difference below this is called a match: one training seed moves the demo's Dice by about 0.02
MEANINGFUL_DICE = 0.01


def summary_line(rows: list[dict], t_prime_source: str) -> str:
    """What the table shows, in one line."""
    pre, pd = rows[0], rows[-1]
    dice, f1 = pd["dice"] - pre["dice"], pd["lesion_f1"] - pre["lesion_f1"]
    vanilla = [r for r in rows if r["method"] == "vanilla DDPM"]
    # judged on the difference as printed, and only beyond one seed's spread (training seeds vary by ~0.02 Dice)
    shown = round(dice, 3)
    verdict = "improves on" if shown >= MEANINGFUL_DICE else ("matches" if shown > -MEANINGFUL_DICE else "falls below")
    return (f"PD-DDPM {verdict} its pre-segmenter (Dice {pd['dice']:.3f} vs {pre['dice']:.3f}, {shown:+.3f}; "
            f"lesion F1 {f1:+.3f}) with T' from {t_prime_source}; its uncertainty finds the errors with AUROC "
            f"{pd.get('uncertainty_auroc', math.nan):.3f} (the pre-segmenter's softmax: "
            f"{pre.get('uncertainty_auroc', math.nan):.3f})"
            + (f"; vanilla DDPM from noise reaches Dice {vanilla[0]['dice']:.3f}." if vanilla else "."))


def _write_report(paths: DemoPaths, profile: DemoRunProfile, device: str, rows: list[dict], runner,
                  num_figures: int, uncertainty_kind: str) -> dict:
    figures = paths.report / "figures"
    write_rows(rows, COLUMNS, paths.report / "results.csv")
    files = [str(table1.plot(rows, figures / "metrics.png"))]
    for case in _test_cases(paths)[:num_figures]:
        predictions = {m: paths.predictions(f) / f"{case}.nii.gz" for m, f in method_folders(profile).items()}
        uncertainty = paths.predictions("pd_ddpm") / "uncertainty" / f"{case}_uncertainty.nii.gz"
        files.append(str(case_figure(paths.images / f"{case}_0000.nii.gz", paths.labels / f"{case}.nii.gz",
                                     predictions, uncertainty if uncertainty.is_file() else None,
                                     figures / f"{case}.png", title=f"{case} ({profile.name} profile)",
                                     uncertainty_kind=uncertainty_kind)))
    return {"profile": profile.name, "device": device, "dataset": str(paths.raw / paths.dataset),
            "note": profile.note, "columns": list(COLUMNS), "rows": rows, "figures": files,
            "denoiser": runner.models.denoiser_folder, "pre_segmenter": runner.models.pre_segmenter_folder}
