"""``case_scores.json``: the per-case scores of every prediction run into one folder, merged under a lock.

Several processes (``-num_parts``) write the same file, so each update takes an exclusive ``fcntl.flock`` on a
hidden lock file beside it, reads the current entries, adds its own and replaces the file atomically
(``io_utils``): no process loses another's entries, and a crash leaves the previous complete file.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.io_utils import write_json_atomic


def record_case_scores(path: str | os.PathLike, scores: dict[str, dict]) -> None:
    """Merge ``scores`` (case name -> that case's scores) into the JSON object at ``path`` (created if absent);
    a case already there is replaced. Undefined values (None, NaN) are written as ``null``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        entries = read_case_scores(path) if path.is_file() else {}
        entries.update(scores)
        write_json_atomic(dict(sorted(entries.items())), path, strict=True)


def read_case_scores(path: str | os.PathLike) -> dict[str, dict]:
    """The entries of a ``case_scores.json``; one sentence if it is not a JSON object."""
    try:
        with open(path) as f:
            entries = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        entries = None
    if not isinstance(entries, dict):
        raise PDDDPMUserError(f"{path} is not a JSON object of case scores; delete it (it is rebuilt as cases are "
                              f"predicted) or move it away.")
    return entries
