"""Experiment outputs: rows as CSV and JSON, a fixed-width table for the console, matplotlib figures (Agg).

A row is a flat dict of strings and numbers; NaN is written as ``nan`` in CSV and as ``NaN`` in
JSON (as nnU-Net writes its summaries).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

from nnunet_pdddpm.io_utils import atomic_path, write_json_atomic

#: column -> (header, format) for console tables
COLUMN_FORMATS = {
    "dice": ("Dice", "{:.3f}"),
    "hd95": ("HD95 (mm)", "{:.2f}"),
    "jaccard": ("Jaccard", "{:.3f}"),
    "lesion_f1": ("lesion F1", "{:.3f}"),
    "mean_uncertainty": ("mean unc.", "{:.2e}"),
    "uncertainty_auroc": ("err-AUROC", "{:.3f}"),
    "nfe_per_case": ("NFE/case", "{:.0f}"),
    "seconds_per_case": ("s/case", "{:.1f}"),
    "dice_mean": ("Dice mean", "{:.3f}"),
    "dice_std": ("Dice std", "{:.3f}"),
    "pre_segmentation_dice": ("pre-seg Dice", "{:.3f}"),
}


def write_rows(rows: Sequence[dict], columns: Sequence[str], csv_path: str | os.PathLike,
               json_path: str | os.PathLike | None = None, extra: dict | None = None) -> None:
    """``rows`` restricted to ``columns`` as CSV (atomically); with ``json_path`` also ``{**extra, "rows": rows}``."""
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_csv_cell(row.get(c, "")) for c in columns])
    if json_path is not None:
        write_json_atomic({**(extra or {}), "columns": list(columns), "rows": list(rows)}, json_path)


def _csv_cell(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Fixed-width text table; numbers formatted per :data:`COLUMN_FORMATS` (others as given)."""
    header = [COLUMN_FORMATS.get(c, (c, ""))[0] for c in columns]
    body = [[_format_cell(row.get(c, ""), c) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _format_cell(value, column: str) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else _number_format(column).format(value)
    return str(value)


def _number_format(column: str) -> str:
    if column in COLUMN_FORMATS:
        return COLUMN_FORMATS[column][1]
    for part, fmt in (("hd95", "{:.2f}"), ("uncertainty", "{:.2e}"), ("dice", "{:.3f}"), ("jaccard", "{:.3f}"),
                      ("f1", "{:.3f}")):
        if part in column:
            return fmt
    return "{:.4g}"


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save as PNG atomically and close the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
