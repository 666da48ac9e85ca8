"""Killed training resumes with ``--c``; killed prediction leaves no complete-looking file and continues."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATASET, DATASET_ID, cli_runs, model_folder, nnunet_env, run_cli

from nnunet_pdddpm.discovery import ENV_VAR

USER_VARIANT = '''
from nnunet_pdddpm.trainers.variants import PDDDPMTrainer_tiny


class PDDDPMTrainer_killable(PDDDPMTrainer_tiny):
    """A user's own variant, found through nnUNet_extTrainer like ours: more epochs, a checkpoint every epoch."""

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 6
        self.save_every = 1
'''


def _as_from_a_terminal() -> None:
    """Ctrl-C's default action in the child: a test run in the background (``cmd &``) inherits SIGINT ignored,
    and Python keeps an ignored SIGINT ignored, as a command started from a terminal would not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, env):
    exe = Path(sys.executable).parent / args[0]
    return subprocess.Popen([str(exe), *args[1:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _wait_until(proc, condition, give_up_s: float = 600) -> None:
    """Poll ``condition`` while ``proc`` runs; ``give_up_s`` only ends a wait that would otherwise never end (a hung
    command), it is not a speed check."""
    give_up = time.monotonic() + give_up_s
    while not condition():
        assert proc.poll() is None, "finished before it could be interrupted"
        if time.monotonic() > give_up:
            pytest.fail(f"still waiting for the moment to interrupt after {give_up_s:.0f} s: the command hangs")
        time.sleep(0.2)


def _kill_when(proc, condition):
    _wait_until(proc, condition)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_training_killed_mid_run_resumes_to_the_same_number_of_epochs(nnunet_root, tmp_path):
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "my_variants.py").write_text(USER_VARIANT)
    env = nnunet_env(nnunet_root)
    env[ENV_VAR] = f"{env[ENV_VAR]}{os.pathsep}{tmp_path / 'ext'}"
    args = ["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "PDDDPMTrainer_killable", "-device", "cpu"]
    fold = model_folder(nnunet_root, "PDDDPMTrainer_killable") / "fold_0"
    latest = fold / "checkpoint_latest.pth"

    def two_epochs_saved():
        return latest.is_file() and torch.load(latest, weights_only=True)["current_epoch"] >= 2

    _kill_when(_start(args, env), two_epochs_saved)
    assert not (fold / "checkpoint_final.pth").exists()
    saved = torch.load(latest, weights_only=True)
    run_cli(args + ["--c"], env)
    final = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert final["current_epoch"] == 6
    assert final["ema"]["num_updates"] == 6 * 4  # EMA continued from the checkpoint, not restarted
    assert final["ema"]["num_updates"] > saved["ema"]["num_updates"]
    assert len(final["logging"]["train_losses"]) == 6  # one logged loss per epoch, none lost or doubled
    assert not list(fold.rglob(".pdddpm_partial"))


def test_prediction_killed_mid_run_continues_to_identical_outputs(trained, tmp_path):
    env = nnunet_env(trained)
    inp = tmp_path / "images"
    shutil.copytree(trained / "raw" / DATASET / "imagesTs", inp)
    for f in sorted((trained / "raw" / DATASET / "imagesTr").iterdir())[:4]:
        shutil.copy(f, inp / f.name)
    args = ["-d", str(DATASET_ID), "-c", "2d", "-tr", "PDDDPMTrainer_tiny", "-preseg_tr", "PDDDPMAttUNetTrainer_tiny",
            "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "-t_prime", "40", "-ensemble_size", "2",
            "-sampler", "ddpm", "--disable_progress_bar", "-seed", "3"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    proc = _start(["nnunet_pdddpm_predict", "-i", str(inp), "-o", str(out), *args], env)
    _kill_when(proc, lambda: out.is_dir() and any(p.suffix == ".gz" for p in out.iterdir()))
    done = sorted(p.name for p in out.iterdir() if p.name.endswith(".nii.gz"))
    assert 0 < len(done) < 6
    for name in done:  # everything that looks complete is complete
        sitk.ReadImage(str(out / name))
        sitk.ReadImage(str(out / "uncertainty" / name.replace(".nii.gz", "_uncertainty.nii.gz")))
    # the continued run, and an uninterrupted one as the reference (one process: the stack is imported once)
    cli_runs("nnunet_pdddpm.cli.predict", [["-i", str(inp), "-o", str(out), *args, "--continue_prediction"],
                                           ["-i", str(inp), "-o", str(ref), *args]], env)
    for sub in (Path("."), Path("uncertainty")):
        names = sorted(p.name for p in (ref / sub).iterdir() if p.name.endswith(".nii.gz"))
        assert names == sorted(p.name for p in (out / sub).iterdir() if p.name.endswith(".nii.gz"))
        for name in names:
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(ref / sub / name))),
                                          sitk.GetArrayFromImage(sitk.ReadImage(str(out / sub / name))))


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every process as {pid: (ppid, session id, command line)}, read from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        table[int(name)] = (int(fields[1]), int(fields[3]), cmdline)
    return table


def _tree(root: int, sessions: set[int]) -> dict[int, tuple[int, int, str]]:
    """``root``, its descendants, and every process of ``sessions`` (orphans keep their session, not their parent)."""
    table = _processes()
    members = {pid for pid, (_, sid, _) in table.items() if pid == root or sid in sessions}
    while True:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in members} - members
        if not more:
            return {pid: table[pid] for pid in members}
        members |= more


def _interrupt_and_expect_no_survivors(proc, sig, sessions, err_file):
    os.kill(proc.pid, sig)  # the main process only, as `kill PID` does
    proc.wait(timeout=120)
    assert proc.returncode == 128 + sig
    err = err_file.read_text()
    assert f"interrupted by {signal.Signals(sig).name}." in err and "Traceback" not in err, err[-3000:]
    deadline = time.monotonic() + 15  # the command ends its children before it exits; allow for stragglers
    while (left := _tree(proc.pid, sessions)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left running: {left}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_sampling_ends_every_child_process(trained, tmp_path, sig):
    inp = tmp_path / "images"
    shutil.copytree(trained / "raw" / DATASET / "imagesTs", inp)
    for f in sorted((trained / "raw" / DATASET / "imagesTr").iterdir())[:4]:
        shutil.copy(f, inp / f.name)
    out, err_file = tmp_path / "out", tmp_path / "stderr.txt"
    exe = Path(sys.executable).parent / "nnunet_pdddpm_predict"
    args = ["-i", str(inp), "-o", str(out), "-d", str(DATASET_ID), "-c", "2d", "-tr", "PDDDPMTrainer_tiny",
            "-preseg_tr", "PDDDPMAttUNetTrainer_tiny", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
            "-t_prime", "40", "-ensemble_size", "2", "-sampler", "ddpm", "--disable_progress_bar"]
    with open(err_file, "w") as err:
        proc = subprocess.Popen([str(exe), *args], env=nnunet_env(trained), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True, preexec_fn=_as_from_a_terminal)
    _wait_until(proc, lambda: out.is_dir() and any(p.name.endswith(".nii.gz") for p in out.iterdir()))
    # sampling the next case: nnU-Net's preprocessing worker and the Manager behind its queues are running
    assert len(_tree(proc.pid, {proc.pid})) >= 3
    _interrupt_and_expect_no_survivors(proc, sig, {proc.pid}, err_file)
    for f in out.glob("*.nii.gz"):  # what looks complete is complete
        sitk.ReadImage(str(f))


@pytest.mark.slow
def test_demo_killed_during_training_ends_nnunet_train_and_its_workers(tmp_path):
    err_file = tmp_path / "output.txt"
    exe = Path(sys.executable).parent / "nnunet_pdddpm_demo"
    with open(err_file, "w") as err:
        proc = subprocess.Popen([str(exe), "-o", str(tmp_path / "work"), "-profile", "tiny", "-device", "cpu",
                                 "-np", "1"], stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
    sessions = {proc.pid}

    def training_started() -> bool:  # nnUNetv2_train runs in a session of its own: collect the sessions as they appear
        tree = _tree(proc.pid, sessions)
        sessions.update(sid for _, sid, _ in tree.values())
        return any("nnUNetv2_train" in cmd for _, _, cmd in tree.values())

    _wait_until(proc, training_started)
    time.sleep(3)
    sessions |= {sid for _, sid, _ in _tree(proc.pid, sessions).values()}
    _interrupt_and_expect_no_survivors(proc, signal.SIGTERM, sessions, err_file)
