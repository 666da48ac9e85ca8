"""Peak memory of ``PDDDPMPredictor.predict_from_data_iterator`` against the number of cases.

Sampling is replaced by a result of the size a real case has (probabilities (K, *shape) and an uncertainty map)
and the export by a pause of the length a real export takes, so only the loop's bookkeeping is measured: with
back-pressure (the default: at most one case more than there are export threads waits) the peak stays flat;
without it (``max_cases_waiting_for_export`` unbounded) every finished case waits in memory when exporting is
slower than sampling. Each figure comes from a fresh process (peak RSS only grows).

    python -m benchmarks.benchmark_export_memory --cases 25 100 300
"""
from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

MODES = {"bounded": None, "unbounded": 10**9}


def _one_run(n_cases: int, waiting: int | None, shape: tuple[int, ...], export_seconds: float, workers: int) -> float:
    """Peak RSS in MiB of one loop over ``n_cases`` synthetic cases."""
    import torch

    from nnunet_pdddpm.inference import predictor as predictor_module
    from nnunet_pdddpm.inference.predictor import PDDDPMPredictor

    class SyntheticPredictor(PDDDPMPredictor):
        def predict_case(self, data, properties, case_key, *args, **kwargs):
            probabilities = torch.rand(2, *shape)
            return SimpleNamespace(probabilities=probabilities, uncertainty=probabilities[1].clone(),
                                   class_uncertainty=None, scores=None)

    def export_case(probabilities, uncertainty, *args, **kwargs) -> None:
        time.sleep(export_seconds)  # resampling and writing of a real case
        float(probabilities.sum() + uncertainty.sum())

    predictor_module.export_case = export_case
    predictor = SyntheticPredictor(device=torch.device("cpu"), allow_tqdm=False, uncertainty_folder="/nonexistent")
    predictor.dataset_json = {"file_ending": ".nii.gz"}
    if waiting is not None:
        predictor.max_cases_waiting_for_export = waiting
    predictor._uncertainty_file = lambda ofile: None  # the synthetic export writes nothing
    items = ({"data": torch.zeros(1, 1, 1), "ofile": f"case_{i:04d}", "data_properties": {}} for i in range(n_cases))
    predictor.predict_from_data_iterator(items, False, workers)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[25, 100, 300])
    parser.add_argument("--shape", type=int, nargs="+", default=[16, 128, 128], help="Case shape (z y x).")
    parser.add_argument("--export_seconds", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2, help="Export threads (-nps).")
    parser.add_argument("--one", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        n, mode = int(args.one[0]), args.one[1]
        print(_one_run(n, MODES[mode], tuple(args.shape), args.export_seconds, args.workers))
        return
    case_mib = 3 * 4 * math.prod(args.shape) / 2**20
    print(f"case: {tuple(args.shape)}, {case_mib:.1f} MiB held until exported; export {args.export_seconds} s, "
          f"{args.workers} export threads")
    print(f"{'cases':>6}  {'bounded MiB':>12}  {'unbounded MiB':>14}")
    for n in args.cases:
        peaks = []
        for mode in MODES:
            cmd = [sys.executable, "-m", "benchmarks.benchmark_export_memory", "--one", str(n), mode, "--shape",
                   *map(str, args.shape), "--export_seconds", str(args.export_seconds), "--workers", str(args.workers)]
            peaks.append(float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-1]))
        print(f"{n:>6}  {peaks[0]:>12.0f}  {peaks[1]:>14.0f}")


if __name__ == "__main__":
    main()
