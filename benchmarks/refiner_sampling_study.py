"""How the refiner's samples are drawn and combined: fast against best sampler, fusion and gating.

On a work folder of ``benchmark_refiner`` (its trained models of ``--seeds``), at T' = 300 (``--quick``: 10) with an
ensemble of 5 and the entropy map, per seed: DDIM 5 steps (the ensemble alone), DDIM 10 steps, ancestral DDPM with every
step (the best the sampler can do; 300 network evaluations per sample), and DDIM 5 steps fused with nnU-Net's softmax
(``-preseg_weight`` 0.25, the refiner's default, or 0.5) or gated by the ensemble's confidence
(``-confidence_gate 0.9``: below it nnU-Net's probabilities are kept) or with lesion detection left to nnU-Net
(``--lesion_gate``, alone or with fusion 0.25), and with the members mirrored as nnU-Net's test-time augmentation
(``--mirrored_members``, alone or with fusion and the gate). Each against nnU-Net and against DDIM 5
unfused (and against benchmark_refiner's nnU-Net trained the refiner's budget more, where it scored one), paired
over cases. The error-AUROC is that of the entropy map predict writes: with fusion or gating the
entropy of the delivered probabilities, for nnU-Net its softmax entropy. The case AURC (risk 1 - Dice, pooled over
seeds) scores nnU-Net's mean softmax entropy and the members' 1 - mean pairwise Dice (samples written before the
study kept the case scores leave it blank).

    python -m benchmarks.refiner_sampling_study -o WORK [--seeds 0] [--device cuda] [--settings ddim10 fused ...]
    python -m benchmarks.refiner_sampling_study -o WORK --demo pdddpm_demo pdddpm_demo_seed1 pdddpm_demo_seed2

``--demo`` studies the CPU demo's models instead (``nnunet_pdddpm_demo`` output folders, one per seed, in the
order of ``--seeds``; default seeds 0 1 2 ...) at the T' their validation sweep chose (300 in the runs measured).

Samples found in ``WORK/sampling`` (``--refiner_budget 3``: ``WORK/sampling_x3``; ``--refiner_schedule poly``:
``WORK/sampling_poly``; ``--refiner_starts mirrored``: ``WORK/sampling_tta``) are reused. Output: a table and
``WORK/refiner_sampling.json`` (``refiner_sampling_x3.json``, ``refiner_sampling_poly.json``,
``refiner_sampling_tta.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.benchmark_fidelity import model_folder
from benchmarks.benchmark_refiner import (
    FULL,
    NNUNET,
    QUICK,
    Setup,
    _runner,
    evaluation_per_case,
    nanmean,
    per_case,
    segmenter_row,
    with_refiner_budget,
)
from nnunet_pdddpm.evaluation.paired import paired_difference
from nnunet_pdddpm.evaluation.risk_coverage import aurc
from nnunet_pdddpm.io_utils import write_json_atomic

T_PRIME = {"full": 300, "quick": 10, "demo": 300}  # quick: the tiny refiner is trained on t < 20
SETTINGS = {  # name: (label, SamplingSettings changes)
    "ddim5": ("DDIM 5 steps, unfused", {"sampler": "ddim", "steps": 5}),
    "ddim10": ("DDIM 10 steps", {"sampler": "ddim", "steps": 10}),
    "ddpm": ("DDPM, every step (best)", {"sampler": "ddpm", "steps": None}),
    "fused25": ("DDIM 5, fused with nnU-Net (w 0.25, default)", {"sampler": "ddim", "steps": 5,
                                                                  "pre_segmentation_weight": 0.25}),
    "fused": ("DDIM 5, fused with nnU-Net (w 0.5)", {"sampler": "ddim", "steps": 5, "pre_segmentation_weight": 0.5}),
    "gated": ("DDIM 5, confidence gate 0.9", {"sampler": "ddim", "steps": 5, "confidence_gate": 0.9}),
    "lesion": ("DDIM 5, lesion gate", {"sampler": "ddim", "steps": 5, "lesion_gate": True}),
    "fused25_lesion": ("DDIM 5, fused w 0.25 + lesion gate", {"sampler": "ddim", "steps": 5,
                                                             "pre_segmentation_weight": 0.25, "lesion_gate": True}),
    "mirror": ("DDIM 5, mirrored members", {"sampler": "ddim", "steps": 5, "mirrored_members": True}),
    "fused25_lesion_mirror": ("DDIM 5, fused w 0.25 + lesion gate, mirrored members",
                              {"sampler": "ddim", "steps": 5, "pre_segmentation_weight": 0.25, "lesion_gate": True,
                               "mirrored_members": True}),
    "fused25_lesion_mirror_e4": ("DDIM 5, fused w 0.25 + lesion gate, mirrored members, ensemble 4",
                                 {"sampler": "ddim", "steps": 5, "pre_segmentation_weight": 0.25, "lesion_gate": True,
                                  "mirrored_members": True, "ensemble_size": 4}),
    "fused25_lesion_mirror_e8": ("DDIM 5, fused w 0.25 + lesion gate, mirrored members, ensemble 8",
                                 {"sampler": "ddim", "steps": 5, "pre_segmentation_weight": 0.25, "lesion_gate": True,
                                  "mirrored_members": True, "ensemble_size": 8}),
}
DEFAULT = "ddim5"  # the reference every setting is paired with: the ensemble alone
DEMO = Setup(None, 986, "PDDDPMDemoCPU", "nnUNetTrainer_demoCPU", "PDDDPMTrainer_demoCPU_refiner", "", (), 5, 5)
#: --demo ... --refiner_starts mirrored: PDDDPMTrainer_demoCPU_refiner_tta, trained in each demo folder beside the
#: demo's refiner (nnUNetv2_train 986 2d 0 -tr PDDDPMTrainer_demoCPU_refiner_tta with the demo's nnU-Net folders)
DEMO_STARTS_MIRRORED = {"refiner": "PDDDPMTrainer_demoCPU_refiner_tta", "tag": "_tta"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="the refiner benchmark's work folder (trained models)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds whose models are used (default: 0)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="a --quick work folder (tiny models; for tests)")
    p.add_argument("--demo", nargs="+", metavar="DEMO_FOLDER",
                   help="study the CPU demo's models: its output folders, one per seed (the seeds default to 0 1 ...)")
    p.add_argument("--refiner_budget", type=int, choices=(1, 3), default=1,
                   help="the refiner of benchmark_refiner --refiner_budget 3 instead (its sampling folder and output "
                        "refiner_sampling_x3.json)")
    p.add_argument("--refiner_schedule", choices=("constant", "poly"), default="constant",
                   help="the refiner of benchmark_refiner --refiner_schedule poly instead (sampling_poly, "
                        "refiner_sampling_poly.json)")
    p.add_argument("--refiner_starts", choices=("single", "mirrored"), default="single",
                   help="the refiner of benchmark_refiner --refiner_starts mirrored instead (sampling_tta, "
                        "refiner_sampling_tta.json)")
    p.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=tuple(SETTINGS),
                   help="settings to run (default: all; ddpm costs 300 network evaluations per sample, hours on a "
                        "CPU); ddim5, the reference, is always run")
    return p


def study_seed(work: Path, seed: int, dataset: Path, device: str, setup: Setup, t_prime: int,
               keys: tuple[str, ...]) -> dict[str, dict]:
    """{setting: {case: {dice, lesion_f1, entropy_auroc, nfe}}}, nnU-Net's row under ``"nnunet"``, and the Dice of
    benchmark_refiner's same-budget nnU-Net under ``"more"`` where it has scored one (not for ``--demo``)."""
    for trainer in (setup.pre_segmenter, setup.refiner):
        if not (model_folder(work, seed, dataset.name, trainer) / "fold_0" / "checkpoint_final.pth").is_file():
            raise SystemExit(f"{work} has no trained {trainer} for seed {seed}; run benchmark_refiner first.")
    runner = _runner(work, seed, dataset, setup, seed, setup.pre_segmenter, "nnunet", device)
    pre = runner.pre_segmentation()

    def probs(case):
        data, properties = runner.case_data(case)
        return pre.probabilities(data, properties, case), pre.nfe[case]

    base = segmenter_row(runner, "nnunet", NNUNET, probs)
    out = {"nnunet": {c: {"dice": v["dice"], "lesion_f1": v["lesion_f1"], "entropy_auroc": v["maps"]["entropy"],
                          "nfe": base["nfe"], "case_score": v["scores"]["mean entropy"]}
                      for c, v in base["cases"].items()}}
    for key in keys:
        label, changes = SETTINGS[key]
        # unfused and unmirrored unless the setting says so: the trainer's defaults are themselves settings here
        settings = runner.settings(**{"t_prime": t_prime, "ensemble_size": setup.ensemble_size,
                                      "uncertainty": "entropy", "pre_segmentation_weight": 0.0, "lesion_gate": False,
                                      "mirrored_members": False, **changes})
        name = f"study_t{t_prime}_{key}"
        if not (runner.output / "evaluation" / f"{name}.json").is_file():
            start = time.perf_counter()
            for case in runner.cases:
                result, nfe, seconds = runner.sample(case, settings, pre)
                runner.export(name, case, result.probabilities, result.uncertainty, nfe, seconds,
                              scores=result.scores or {})
            runner.evaluate(name)
            print(f"  seed {seed}: {label}: {time.perf_counter() - start:.1f} s", flush=True)
        log = json.loads((runner.folder(name) / "pdddpm_cases.json").read_text())
        out[key] = {c: {"dice": v["dice"], "lesion_f1": v["lesion_f1"], "entropy_auroc": v["uncertainty_auroc"],
                        "nfe": log[c]["nfe"], "case_score": _disagreement(log[c].get("scores", {}))}
                    for c, v in per_case(runner, name).items()}
    more = runner.output.parent / "more" / "evaluation" / "more.json"  # benchmark_refiner's folder layout
    if more.is_file():
        out["more"] = evaluation_per_case(more, ("dice",))
    return out


def _disagreement(scores: dict) -> float:
    """The members' 1 - mean pairwise Dice (NaN for samples written before the study kept the case scores)."""
    return 1 - scores["pairwise_dice"] if scores.get("pairwise_dice") is not None else float("nan")


def summarise(per_seed: dict[int, dict]) -> list[dict]:
    rows = []
    keys = [k for k in SETTINGS if all(k in v for v in per_seed.values())]
    for key, label in [("nnunet", NNUNET), *((k, SETTINGS[k][0]) for k in keys)]:
        pairs = [(s, c) for s in per_seed for c in per_seed[s][key]]
        value = {m: [per_seed[s][key][c].get(m, float("nan")) for s, c in pairs]
                 for m in ("dice", "lesion_f1", "entropy_auroc", "nfe")}
        row = {"setting": label, "n": len(pairs), **{m: nanmean(v) for m, v in value.items()}}
        # case level (risk 1 - Dice, pooled over seeds): nnU-Net's mean softmax entropy, the members' disagreement
        score = [per_seed[s][key][c].get("case_score", float("nan")) for s, c in pairs]
        row["aurc"] = aurc(score, [1 - d for d in value["dice"]]) if np.isfinite(score).all() else float("nan")
        for against in ("nnunet", "more", DEFAULT):
            if against != key and all(against in v for v in per_seed.values()):
                d = paired_difference([per_seed[s][against][c]["dice"] for s, c in pairs], value["dice"])
                row[f"delta_dice_vs_{against}"] = [d["mean"], d["low"], d["high"]]
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    def ci(r, key):
        return "" if key not in r else "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r[key])

    head = ["setting", "n", "Dice", "ΔDice vs nnU-Net", "ΔDice vs nnU-Net + budget", "ΔDice vs DDIM 5", "lesion F1",
            "err-AUROC (entropy)", "case AURC", "NFE/case"]
    lines = [head] + [[r["setting"], str(r["n"]), f"{r['dice']:.4f}", ci(r, "delta_dice_vs_nnunet"),
                       ci(r, "delta_dice_vs_more"), ci(r, f"delta_dice_vs_{DEFAULT}"), f"{r['lesion_f1']:.3f}",
                       f"{r['entropy_auroc']:.3f}",
                       "" if np.isnan(r.get("aurc", np.nan)) else f"{r['aurc']:.3f}", f"{r['nfe']:.0f}"]
                      for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def link_demo_folders(work: Path, demos: list[Path], seeds: list[int]) -> None:
    """Lay the demo outputs out as a benchmark work folder: ``results_seedN`` and ``nnUNet_raw`` as links (the
    demo's data are the same for every seed; its trained models differ)."""
    if len(demos) != len(seeds):
        raise SystemExit(f"--demo names {len(demos)} folders but --seeds {len(seeds)} seeds; give one folder per seed.")
    for demo in demos:
        if not (demo / "nnUNet_results").is_dir():
            raise SystemExit(f"{demo} is not an nnunet_pdddpm_demo output folder (no nnUNet_results); run the demo.")
    work.mkdir(parents=True, exist_ok=True)
    links = {work / "nnUNet_raw": demos[0] / "nnUNet_raw",
             **{work / f"results_seed{s}": d / "nnUNet_results" for s, d in zip(seeds, demos)}}
    for link, target in links.items():
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(args.output).resolve()
    setup, t_prime = (QUICK, T_PRIME["quick"]) if args.quick else (FULL, T_PRIME["full"])
    if args.demo:
        setup, t_prime = DEMO, T_PRIME["demo"]
    starts = args.refiner_starts
    if args.demo and starts == "mirrored":  # the demo folders hold their own mirrored-starts refiner
        setup, starts = dataclasses.replace(DEMO, **DEMO_STARTS_MIRRORED), "single"
    setup = with_refiner_budget(setup, args.refiner_budget, args.refiner_schedule, starts)
    if args.demo:
        if "--seeds" not in (argv if argv is not None else sys.argv):
            args.seeds = list(range(len(args.demo)))
        link_demo_folders(work, [Path(d).resolve() for d in args.demo], args.seeds)
    dataset = work / "nnUNet_raw" / f"Dataset{setup.dataset_id:03d}_{setup.dataset_name}"
    start = time.perf_counter()
    keys = tuple(k for k in SETTINGS if k == DEFAULT or k in args.settings)
    per_seed = {seed: study_seed(work, seed, dataset, args.device, setup, t_prime, keys) for seed in args.seeds}
    rows = summarise(per_seed)
    wall = time.perf_counter() - start
    gpu = None
    if args.device == "cuda":
        import torch
        gpu = torch.cuda.get_device_name(0)
    print()
    print(format_rows(rows))
    print(f"\nT'={t_prime}, ensemble {setup.ensemble_size} (unless the row says); seeds {args.seeds}; n = seeds x "
          f"test cases; wall time {wall / 60:.1f} min; {os.cpu_count()} CPU cores" + (f", {gpu}" if gpu else ""))
    write_json_atomic({"command": " ".join(["python -m benchmarks.refiner_sampling_study", *(argv or sys.argv[1:])]),
                       "wall_time_s": wall, "gpu": gpu, "seeds": args.seeds, "rows": rows,
                       "per_case": {str(s): v for s, v in per_seed.items()}},
                      work / f"refiner_sampling{setup.tag}.json", strict=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
