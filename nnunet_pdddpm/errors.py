"""User-facing errors: one clear sentence, no traceback."""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Callable, TypeVar

from nnunet_pdddpm.interruption import ending_child_processes

F = TypeVar("F", bound=Callable[..., object])


class PDDDPMUserError(Exception):
    """A problem with the user's input or setup; the message says what is wrong and how to fix it."""


def cli_entry(func: F) -> F:
    """Wrap a console-script ``main``: a :class:`PDDDPMUserError` prints ``error: <sentence>`` and exits 2;
    SIGTERM and Ctrl-C end every child process and exit with 128 + the signal number."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        show_progress_messages()
        with ending_child_processes():
            try:
                return func(*args, **kwargs)
            except PDDDPMUserError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)

    return wrapper  # type: ignore[return-value]


def is_nnunet_command() -> bool:
    """Whether this process is one of nnU-Net's console scripts (``nnUNetv2_train``, ...), not a user's Python."""
    return os.path.basename(sys.argv[0] if sys.argv else "").startswith("nnUNetv2_")


def install_excepthook() -> None:
    """Make an uncaught :class:`PDDDPMUserError` print one sentence instead of a traceback.

    nnU-Net's own commands (``nnUNetv2_train``) do not catch our errors; this keeps their output to
    ``error: <sentence>`` for user mistakes while every other exception keeps its traceback.
    """
    if getattr(sys.excepthook, "_pdddpm", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, PDDDPMUserError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            previous(exc_type, exc, tb)

    hook._pdddpm = True  # type: ignore[attr-defined]
    sys.excepthook = hook


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (tests and wrappers replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_progress_messages() -> None:
    """Print the package's INFO log records (progress of cases and experiments) as plain lines on stdout.

    Library modules log; only the console scripts decide that their user sees it.
    """
    logger = logging.getLogger("nnunet_pdddpm")
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
