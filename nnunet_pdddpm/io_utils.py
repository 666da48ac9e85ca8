"""Atomic output: a crash never leaves a file that looks complete.

Every writer in this package writes to a hidden temporary name in the target folder and
renames it into place (``os.replace`` is atomic on one file system).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    The temporary name keeps ``target``'s full suffix (``.nii.gz``, ``.npz``) so writers that
    choose a format by extension still work. On an exception the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    name = target.name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial" + _full_suffix(name), dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _full_suffix(name: str) -> str:
    for multi in (".nii.gz", ".tar.gz"):
        if name.endswith(multi):
            return multi
    return Path(name).suffix


def write_json_atomic(obj: Any, target: str | os.PathLike, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``target`` atomically (NaN is written as NaN, like nnU-Net)."""
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=False)


def write_text_atomic(text: str, target: str | os.PathLike) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
