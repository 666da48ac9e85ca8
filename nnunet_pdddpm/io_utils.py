"""Atomic, verified output: a failed write fails loudly and never leaves a file that looks complete.

Every writer in this package writes into a hidden folder ``.pdddpm_partial`` next to the target
and renames the finished file into place (``os.replace`` is atomic on one file system). Partial
files thus never appear among the outputs that nnU-Net's tools list (they only look at the top
level of a folder), and a killed run leaves at most a stale file in the hidden folder.

Before the rename the temporary file is flushed to disk (``fsync``, which is where a full disk shows up
for data the kernel had buffered) and, when the caller gives a check, read back: SimpleITK's NIfTI writer
reports a full disk only on its console and returns normally with a truncated file. Any ``OSError``
(disk full, read-only file system, permissions) or failed read-back becomes one
:class:`~nnunet_pdddpm.errors.PDDDPMUserError` naming the file and the cause.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from nnunet_pdddpm.errors import PDDDPMUserError

PARTIAL_FOLDER = ".pdddpm_partial"

_ADVICE = {
    errno.ENOSPC: "free space on that disk or choose another output folder",
    errno.EDQUOT: "free space within your quota or choose another output folder",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "make the folder writable or choose another output folder",
    errno.EPERM: "make the folder writable or choose another output folder",
}


class IncompleteWriteError(Exception):
    """A written file read back does not hold what was written; the message is a clause (``"it ends early"``)."""


def write_failure(target: str | os.PathLike, error: BaseException) -> PDDDPMUserError:
    """The one sentence for a failed write of ``target``: the file, the cause, what to do."""
    if isinstance(error, OSError):
        cause = error.strerror or str(error)
        advice = _ADVICE.get(error.errno, "check the disk or choose another output folder")
    else:
        cause = f"the file read back is incomplete ({error})"
        advice = "the disk may be full or failing, so free space or choose another output folder"
    return PDDDPMUserError(f"Could not write {target}: {cause}; {advice}.")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, verify: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yield a temporary path for ``target``; fsync it, check it with ``verify`` and rename it onto ``target``.

    The temporary file lives in ``target.parent / PARTIAL_FOLDER`` and ends with ``target``'s name
    (so writers that choose a format by extension, like SimpleITK or ``np.savez``, still work).
    ``verify(tmp)`` reads the written file back and raises :class:`IncompleteWriteError` if it is not what
    was written. On any exception the temporary file is removed and ``target`` is untouched; an ``OSError``
    or a failed check is raised as :class:`~nnunet_pdddpm.errors.PDDDPMUserError` (see :func:`write_failure`).
    """
    target = Path(target)
    partial = target.parent / PARTIAL_FOLDER
    tmp = partial / f"{uuid.uuid4().hex}_{target.name}"
    try:
        _create_in_partial_folder(partial, tmp)
    except OSError as e:
        raise write_failure(target, e) from None
    try:
        yield str(tmp)
        _fsync(tmp)
        if verify is not None:
            verify(str(tmp))
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    except (OSError, IncompleteWriteError) as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise write_failure(target, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    finally:
        with contextlib.suppress(OSError):
            partial.rmdir()  # only succeeds once no other writer uses it


def _create_in_partial_folder(partial: Path, tmp: Path) -> None:
    while True:  # another writer may remove the (then empty) folder between our mkdir and our file
        try:
            # mkdir(exist_ok=True) still raises FileExistsError when the folder vanishes between its own
            # mkdir and is_dir checks
            partial.mkdir(parents=True, exist_ok=True)
            tmp.touch(exist_ok=False)  # a non-empty folder cannot be removed by others
            return
        except (FileNotFoundError, FileExistsError):
            continue


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some file systems cannot fsync a folder, which is no error of ours."""
    with contextlib.suppress(OSError):
        _fsync(folder)


def write_bytes_atomic(data: bytes, target: str | os.PathLike) -> None:
    """Write ``data`` to ``target`` atomically; the file is read back and compared before the rename."""
    def same_bytes(tmp: str) -> None:
        with open(tmp, "rb") as f:
            back = f.read()
        if back != data:
            raise IncompleteWriteError(f"{len(back)} of {len(data)} bytes read back" if len(back) != len(data)
                                       else "its bytes differ from those written")

    with atomic_path(target, same_bytes) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json_atomic(obj: Any, target: str | os.PathLike, indent: int = 2, strict: bool = False) -> None:
    """Write ``obj`` as JSON to ``target`` atomically.

    NaN is written as NaN, like nnU-Net's summaries; ``strict=True`` writes standard JSON instead, with
    NaN and infinities as ``null`` (for reports that other tools parse).
    """
    text = json.dumps(_finite_or_none(obj) if strict else obj, indent=indent, sort_keys=False, allow_nan=not strict)
    write_bytes_atomic(text.encode(), target)


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj



LOCK_FILE = ".pdddpm_lock"


@contextlib.contextmanager
def output_folder_lock(folder: str | os.PathLike, flag: str = "-o", name: str = LOCK_FILE) -> Iterator[None]:
    """Hold ``folder/name`` (an exclusive ``flock`` on a file holding our PID) while a command writes into
    ``folder``; a second command gets one sentence naming the owner's PID. Runs that may share a folder (nnU-Net's
    ``-part_id`` of ``-num_parts``) use different ``name``s.

    The kernel drops a ``flock`` when its process dies, so a lock file left by a killed run is stale by
    construction and is simply taken over. ``folder`` is created if missing and removed again if it is still
    empty at the end.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failure(folder, e) from None
    path = folder / name
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_failure(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PDDDPMUserError(f"{flag} {folder} is in use by another prediction (process {owner}, lock file "
                                  f"{path}); wait for it to finish or choose another {flag}.") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its owner removed the file between our open and our lock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # before the unlock, so that a waiting opener sees a removed file and retries
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
