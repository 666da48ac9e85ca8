"""Shared fixtures: a tiny nnU-Net dataset, planned, preprocessed and trained through the real CLIs (once).

The trained models are the short variants ``PDDDPMAttUNetTrainer_tiny`` (pre-segmenter) and
``PDDDPMTrainer_tiny`` (denoiser) on the 2d configuration, on the CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores, each with processes that run torch on every core (nnU-Net sets as many threads as
    # cores): OpenMP threads that spin while they wait for work starve the other worker's (2.4x fewer convolutions
    # per second in all, measured), threads that sleep do not. Inherited by every subprocess; set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import make_dataset  # noqa: E402

DATASET_ID = 991
DATASET = "Dataset991_Tiny"
ROOT = Path(__file__).resolve().parents[1]  # the repository (benchmarks/ is not installed)


def nnunet_env(root: Path) -> dict:
    """Environment for nnU-Net subprocesses rooted at ``root`` (2 cores: one worker each)."""
    from nnunet_pdddpm.discovery import ENV_VAR, extended_value

    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1",
               nnUNet_compile="false", PYTHONUNBUFFERED="1")
    env[ENV_VAR] = extended_value(env.get(ENV_VAR))
    return env


def run_cli(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script from this environment's bin folder; fail with its output if it fails."""
    exe = Path(sys.executable).parent / args[0]
    proc = subprocess.run([str(exe), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


_ONE_PROCESS_DRIVER = """
import contextlib, importlib, io, json, sys, traceback
main = importlib.import_module(sys.argv[1]).main
results = []
for argv in json.loads(sys.stdin.read()):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            code = -1
            err.write(traceback.format_exc())
    results.append([code, out.getvalue(), err.getvalue()])
print("RESULTS " + json.dumps(results))
"""


def cli_in_one_process(module: str, argvs: list[list[str]], env: dict) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each command line, run through ``module.main`` (the console script's function,
    ``cli_entry`` included) one after the other in one process, so that the imports are paid once, not once per
    command line."""
    proc = subprocess.run([sys.executable, "-c", _ONE_PROCESS_DRIVER, module], input=json.dumps(argvs), env=env,
                          capture_output=True, text=True, timeout=900)
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and marker, proc.stdout[-4000:] + proc.stderr[-4000:]
    return [tuple(r) for r in json.loads(marker[-1][len("RESULTS "):])]


def cli_runs(module: str, argvs: list[list[str]], env: dict) -> list[str]:
    """The stdout of each command line (see :func:`cli_in_one_process`); each must exit 0."""
    results = cli_in_one_process(module, argvs, env)
    for argv, (code, _, stderr) in zip(argvs, results):
        assert code == 0, f"{argv}: exit {code}\n{stderr[-4000:]}"
    return [stdout for _, stdout, _ in results]


def cli_refusals(module: str, argvs: list[list[str]], env: dict) -> list[str]:
    """The ``error:`` sentence of each refused command line (see :func:`cli_in_one_process`).

    Each command must exit 2 with exactly one ``error:`` line and no traceback.
    """
    lines = []
    for argv, (code, _, stderr) in zip(argvs, cli_in_one_process(module, argvs, env)):
        assert code == 2 and "Traceback" not in stderr, f"{argv}: exit {code}\n{stderr}"
        errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, f"{argv}:\n{stderr}"
        lines.append(errors[0])
    return lines


def _built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per test run and a private copy of it for this process.

    Under pytest-xdist every worker is its own process with its own session fixtures: the first worker to ask
    builds the folder under a file lock, the others wait for it, and each gets a copy, so that what one worker's
    tests write (predictions, more folds) never reaches another's.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / f"shared_{name}"
    with FileLock(f"{shared}.lock"):
        if not (shared.parent / f"{shared.name}.done").exists():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            build(shared)
            (shared.parent / f"{shared.name}.done").touch()
    copy = tmp_path_factory.mktemp(name)
    shutil.copytree(shared, copy, symlinks=True, dirs_exist_ok=True)
    return copy


def _plan(root: Path) -> None:
    make_dataset(root / "raw", DATASET_ID)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "3d_fullres", "-np", "1", "-npfp",
             "1", "--verify_dataset_integrity"], nnunet_env(root))


def _train(root: Path) -> None:
    env = nnunet_env(root)
    for trainer in ("PDDDPMAttUNetTrainer_tiny", "PDDDPMTrainer_tiny"):
        run_cli(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", trainer, "-device", "cpu"], env)


def _plan_and_train(root: Path) -> None:
    _plan(root)
    _train(root)


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory) -> Path:
    """Raw dataset + nnUNetv2_plan_and_preprocess (2d and 3d_fullres)."""
    return _built_once(tmp_path_factory, "nnunet", _plan)


@pytest.fixture(scope="session")
def trained(nnunet_root, tmp_path_factory) -> Path:
    """Both tiny models trained on fold 0 of the 2d configuration through ``nnUNetv2_train``, in ``nnunet_root``."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        _train(nnunet_root)
        return nnunet_root
    built = _built_once(tmp_path_factory, "nnunet_trained", _plan_and_train)
    for part in ("raw", "preprocessed", "results"):  # the data the models saw, their split file and results
        shutil.copytree(built / part, nnunet_root / part, symlinks=True, dirs_exist_ok=True)
    return nnunet_root


@pytest.fixture(scope="session")
def refiner_quick(tmp_path_factory) -> Path:
    """``benchmarks/benchmark_refiner.py --quick`` run once (its tiny dataset, plain nnU-Net on two folds, the refiner,
    the same nnU-Net trained more, a second seed's nnU-Net, the table): its work folder. The fidelity benchmark's
    quick test runs in the same folder and reuses its dataset and preprocessing."""
    def run(work: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", nnUNet_n_proc_DA="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", "benchmarks.benchmark_refiner", "-o", str(work), "--quick", "--seeds", "0",
                   "--num_processes", "1", "--jobs", "2"]  # two trainings at a time: the parallel path too
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "PD-DDPM refiner" in proc.stdout and "plateau check" in proc.stdout

    return _built_once(tmp_path_factory, "refiner", run)


@pytest.fixture(scope="module")
def env(trained):
    """The trained tiny models' root, with nnU-Net's folder variables pointing at it for the module's tests."""
    mp = pytest.MonkeyPatch()
    for k, v in nnunet_env(trained).items():
        if k.startswith("nnUNet"):
            mp.setenv(k, v)
    yield trained
    mp.undo()


def model_folder(root: Path, trainer: str, configuration: str = "2d") -> Path:
    return root / "results" / DATASET / f"{trainer}__nnUNetPlans__{configuration}"


def make_trainer(root: Path, trainer_class, monkeypatch, configuration: str = "2d"):
    """An initialised trainer of ``trainer_class`` on the CPU, fold 0 of the preprocessed tiny dataset."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    for k, v in nnunet_env(root).items():
        if k.startswith("nnUNet"):
            monkeypatch.setenv(k, v)
    pre = root / "preprocessed" / DATASET
    plans = load_json(pre / "nnUNetPlans.json")
    plans["continue_training"] = False  # nnU-Net's run_training sets this key; the constructor pops it
    trainer = trainer_class(plans, configuration, 0, load_json(pre / "dataset.json"), torch.device("cpu"))
    trainer.initialize()
    return trainer


# the longest files first, so that the two workers finish together (pytest-xdist's --dist loadfile with
# --no-loadscope-reorder hands files out in this order, the next one to whichever worker is nearly done). The first
# two build the shared fixtures side by side: test_refiner.py the refiner's quick run, test_interruptions.py the
# trained tiny models that most later files need; the fidelity benchmark, which reuses the refiner's quick run, is
# the last of these.
LONGEST_FILES = ("test_refiner.py", "test_interruptions.py", "test_demo_pipeline.py", "test_3d_multiclass.py",
                 "test_predict_cli.py", "test_predictor_contract.py", "test_fuzz_table.py", "test_sampling.py",
                 "test_fuzz_table_contracts.py", "test_t_prime_sweep.py", "test_benchmark_script.py",
                 "test_training_e2e.py", "test_benchmark_fidelity.py")


def pytest_collection_modifyitems(config, items):
    """Run the longest test files first (see ``LONGEST_FILES``); the order within a file is kept."""
    def rank(item) -> int:
        file = item.nodeid.split("::")[0]
        return next((n for n, name in enumerate(LONGEST_FILES) if file.endswith(name)), len(LONGEST_FILES))

    items.sort(key=rank)
