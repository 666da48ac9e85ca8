"""Atomic output: a crash never leaves a file that looks complete.

Every writer in this package writes into a hidden folder ``.pdddpm_partial`` next to the target
and renames the finished file into place (``os.replace`` is atomic on one file system). Partial
files thus never appear among the outputs that nnU-Net's tools list (they only look at the top
level of a folder), and a killed run leaves at most a stale file in the hidden folder.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

PARTIAL_FOLDER = ".pdddpm_partial"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path for ``target``; rename it onto ``target`` on success.

    The temporary file lives in ``target.parent / PARTIAL_FOLDER`` and ends with ``target``'s name
    (so writers that choose a format by extension, like SimpleITK or ``np.savez``, still work).
    On an exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    partial = target.parent / PARTIAL_FOLDER
    tmp = partial / f"{uuid.uuid4().hex}_{target.name}"
    while True:  # another writer may remove the (then empty) folder between our mkdir and our file
        try:
            # mkdir(exist_ok=True) still raises FileExistsError when the folder vanishes between its own
            # mkdir and is_dir checks
            partial.mkdir(parents=True, exist_ok=True)
            tmp.touch(exist_ok=False)  # a non-empty folder cannot be removed by others
            break
        except (FileNotFoundError, FileExistsError):
            continue
    try:
        yield str(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    finally:
        with contextlib.suppress(OSError):
            partial.rmdir()  # only succeeds once no other writer uses it


def write_json_atomic(obj: Any, target: str | os.PathLike, indent: int = 2, strict: bool = False) -> None:
    """Write ``obj`` as JSON to ``target`` atomically.

    NaN is written as NaN, like nnU-Net's summaries; ``strict=True`` writes standard JSON instead, with
    NaN and infinities as ``null`` (for reports that other tools parse).
    """
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            json.dump(_finite_or_none(obj) if strict else obj, f, indent=indent, sort_keys=False,
                      allow_nan=not strict)


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj

