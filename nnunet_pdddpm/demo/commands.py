"""Running nnU-Net's own commands for the demo: their environment, and their output streamed to the console.

The demo calls the real console scripts (``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``,
``nnUNetv2_predict``) so that what it prints is what a user would type. Their full output goes to
a log file; the console gets every line, except that progress bars (lines ended by ``\\r``) are
shown at most every few seconds.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nnunet_pdddpm.discovery import ENV_VAR, extended_value
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.interruption import end_process_group

PROGRESS_INTERVAL_S = 10.0


def nnunet_environment(raw: Path, preprocessed: Path, results: Path, num_processes: int, device: str) -> dict:
    """``os.environ`` plus nnU-Net's folders, its worker counts, trainer discovery and unbuffered output.

    Worker counts are set, not inherited: nnU-Net's defaults (up to 12 augmentation workers) swamp a
    small machine, and ``nnUNet_n_proc_DA=0`` would break planning.
    """
    env = dict(os.environ)
    env.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(results),
               nnUNet_def_n_proc=str(num_processes), nnUNet_n_proc_DA=str(max(1, num_processes)),
               PYTHONUNBUFFERED="1")
    if device != "cuda":
        env["nnUNet_compile"] = "false"
    env[ENV_VAR] = extended_value(env.get(ENV_VAR))
    return env


def console_script(name: str) -> str:
    """The console script ``name`` of this Python environment (next to the interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise PDDDPMUserError(f"The command {name} was not found; install nnunetv2 in this Python environment.")
    return found


def run_command(args: list[str], env: dict, log_file: Path, indent: str = "    | ") -> float:
    """Run a console script, stream its output, return its wall time in seconds; a failure raises one sentence."""
    print(f"  $ {shlex.join(args)}", flush=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_file, "wb") as log:
        # Its own process group: on SIGTERM/Ctrl-C the command and its workers end together (see interruption.py).
        proc = subprocess.Popen([console_script(args[0]), *args[1:]], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            last_line = _stream(proc, log, indent)
            code = proc.wait()
        finally:
            if proc.returncode is None:
                end_process_group(proc)
    seconds = time.perf_counter() - start
    if code != 0:
        raise PDDDPMUserError(f"{args[0]} failed with exit code {code} (last line: {last_line!r}); its whole output "
                              f"is in {log_file}.")
    return seconds


def _stream(proc: subprocess.Popen, log, indent: str) -> str:
    """Copy ``proc``'s output to ``log`` and the console; returns its last non-empty line."""
    buffer, last_line, last_progress = b"", "", 0.0
    while True:
        chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
        if not chunk:
            break
        log.write(chunk)
        buffer += chunk
        *parts, buffer = re.split(rb"(\r\n|\r|\n)", buffer)
        for text, sep in zip(parts[::2], parts[1::2]):
            line = text.decode(errors="replace").rstrip()
            if not line:
                continue
            last_line = line
            if sep == b"\r":  # a progress bar redrawing itself
                if time.monotonic() - last_progress < PROGRESS_INTERVAL_S:
                    continue
                last_progress = time.monotonic()
            print(indent + line, flush=True)
    if buffer.strip():
        last_line = buffer.decode(errors="replace").strip()
        print(indent + last_line, flush=True)
    return last_line
