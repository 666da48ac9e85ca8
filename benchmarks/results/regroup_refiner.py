"""Regroup a ``refiner.json`` written before the refiner benchmark grouped its sweep rows across seeds.

The device run behind ``refiner_gpu_3seeds.{json,csv}`` printed one row per T' its sweep chose; this recomputes the
summary from its per-case values with today's grouping (one "T' of the sweep" row, the chosen T' per seed kept):

    PYTHONPATH=. python benchmarks/results/regroup_refiner.py OLD/refiner.json benchmarks/results/refiner_gpu_3seeds
"""
import json
import re
import sys

from benchmarks.benchmark_refiner import COLUMNS, format_curve, format_rows, summarise
from nnunet_pdddpm.experiments.report import write_rows
from nnunet_pdddpm.io_utils import write_json_atomic


def main(source: str, destination: str) -> None:
    meta = json.loads(open(source).read())
    for r in meta["per_case"]:
        m = re.match(r"T'=(\d+)( \(sweep\))?", r["sampler"])
        if m and "t_prime" not in r:
            r["t_prime"] = int(m.group(1))
            if m.group(2):
                r["sampler"] = r["sampler"].replace(m.group(0), "T' of the sweep", 1)
    rows = summarise(meta["per_case"])
    print(format_rows(rows))
    for seed, curve in meta["learning_curves"].items():
        print(f"  seed {seed}: {format_curve(curve, max(1, len(curve['mean_fg_dice']) // 8))}")
    meta["rows"] = rows
    write_rows([{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows],
               COLUMNS, destination + ".csv")
    write_json_atomic(meta, destination + ".json", strict=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
