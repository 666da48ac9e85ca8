"""``nnunet_pdddpm_evaluate``: WMH-challenge metrics of a prediction folder, to JSON and CSV.

Thin layer: parse, validate the paths, call
:func:`nnunet_pdddpm.evaluation.evaluate_folders`, write the outputs atomically, print means.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from typing import Any

from nnunet_pdddpm.cli.checks import check_output_file
from nnunet_pdddpm.cli.spellings import parse_args
from nnunet_pdddpm.errors import PDDDPMUserError, cli_entry
from nnunet_pdddpm.evaluation import evaluate_folders
from nnunet_pdddpm.io_utils import write_bytes_atomic, write_json_atomic


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_pdddpm_evaluate",
        description="Evaluate segmentations against references with the WMH challenge's metrics (Dice, Jaccard, "
        "HD95 in mm, lesion recall/precision/F1, AVD) and, optionally, calibration and uncertainty metrics. "
        "Every reference case is paired with the prediction of the same file name.",
    )
    parser.add_argument("-ref", required=True, help="Folder of reference label maps (CASE<file_ending>).")
    parser.add_argument("-pred", required=True, help="Folder of predicted label maps with the references' names.")
    parser.add_argument("-unc", default=None,
                        help="Optional folder of uncertainty maps CASE_uncertainty<file_ending> (float, same grid); "
                        "adds uncertainty_auroc (misclassified voxels vs uncertainty) and mean_uncertainty.")
    parser.add_argument("-prob", default=None,
                        help="Optional folder of nnU-Net probability files CASE.npz (key 'probabilities', "
                        "shape (K, z, y, x), channel 0 = background; from --save_probabilities); adds ece and brier.")
    parser.add_argument("-l", "--labels", type=int, nargs="+", default=None,
                        help="Foreground labels to evaluate, each as a binary mask (default: every nonzero label "
                        "found). Any other value in a file is an error.")
    parser.add_argument("-exclude_label", type=int, default=None,
                        help="WMH rule: reference voxels with this label ('other pathology', 2 in the challenge) "
                        "are not evaluated and the prediction is set to background there.")
    parser.add_argument("-exclude", default=None,
                        help="Optional folder of masks CASE<file_ending> on the reference's grid (nonzero = excluded; "
                        "e.g. otherPathologyTs of nnunet_pdddpm_convert_wmh2017): the WMH rule of -exclude_label "
                        "for references whose label 2 is kept in a separate file. Reference and prediction are set "
                        "to background there before every metric.")
    parser.add_argument("-ignore_label", type=int, default=None,
                        help="nnU-Net's ignore label from dataset.json: voxels with it in the reference are not "
                        "evaluated.")
    parser.add_argument("-file_ending", default=".nii.gz", help="File ending of the images (default: .nii.gz).")
    parser.add_argument("--allow_missing", action="store_true",
                        help="Skip cases whose prediction (or uncertainty/probability file) is missing and list them "
                        "under 'missing_cases' instead of stopping with an error.")
    parser.add_argument("-o", "--output", required=True,
                        help="Summary JSON to write (e.g. summary.json); a per-case CSV with the same stem is "
                        "written next to it.")
    return parser


def _validate(args: argparse.Namespace) -> tuple[Path, Path]:
    """Check the paths before any image is read; return (json path, csv path)."""
    for flag, folder in (("-ref", args.ref), ("-pred", args.pred), ("-unc", args.unc), ("-prob", args.prob),
                         ("-exclude", args.exclude)):
        if folder is not None and not Path(folder).is_dir():
            raise PDDDPMUserError(f"{flag} {folder} is not an existing folder.")
    output = Path(args.output)
    if output.suffix != ".json":
        raise PDDDPMUserError(f"-o {output} must name a .json file.")
    if output.is_dir():
        raise PDDDPMUserError(f"-o {output} is a folder; give a file name such as {output / 'summary.json'}.")
    check_output_file("-o", output)
    if output.resolve().parent == Path(args.ref).resolve():
        raise PDDDPMUserError(f"-o {output} is inside the reference folder; write results elsewhere.")
    return output, output.with_suffix(".csv")


def write_case_csv(summary: dict[str, Any], target: Path) -> None:
    """One row per case and label: ``case, label, <metric>...``; NaN written as ``nan``."""
    names = summary["metric_names"]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["case", "label", *names])
    for case in summary["metric_per_case"]:
        for label, values in case["metrics"].items():
            writer.writerow([case["case"], label, *(repr(values[n]) for n in names)])
    write_bytes_atomic(text.getvalue().encode(), target)


def format_means(summary: dict[str, Any]) -> str:
    """Table of means over cases: one row per label, ``value (n NaN)`` where cases were NaN, and with several
    labels their mean (every label weighs the same, as nnU-Net's ``foreground_mean``)."""
    names = summary["metric_names"]
    header = ["label", *names]
    rows = []
    for label, means in summary["mean"].items():
        cells = [label]
        for name in names:
            value, n_nan = means[name], summary["n_nan"][label][name]
            text = "nan" if math.isnan(value) else f"{value:.4g}"
            cells.append(f"{text} ({n_nan} NaN)" if n_nan else text)
        rows.append(cells)
    if len(summary["mean"]) > 1 and "foreground_mean" in summary:
        rows.append(["mean", *(f"{summary['foreground_mean'][name]:.4g}" for name in names)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(), argv)
    json_path, csv_path = _validate(args)
    summary = evaluate_folders(
        args.ref, args.pred, unc_dir=args.unc, prob_dir=args.prob, labels=args.labels,
        file_ending=args.file_ending, ignore_label=args.ignore_label, exclude_label=args.exclude_label,
        allow_missing=args.allow_missing, exclude_dir=args.exclude,
    )
    write_json_atomic(summary, json_path)
    write_case_csv(summary, csv_path)
    print(f"{summary['n_cases']} case(s) evaluated; means over cases (NaN cases left out):")
    print(format_means(summary))
    if summary["missing_cases"]:
        print(f"missing (not evaluated): {', '.join(summary['missing_cases'])}")
    print(f"wrote {json_path} and {csv_path}")


if __name__ == "__main__":
    main()
