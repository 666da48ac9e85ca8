"""SIGTERM and Ctrl-C end our commands with every process they started.

Python's default SIGTERM kills the interpreter at once: no ``finally`` block, no ``atexit`` handler runs, so
nnU-Net's preprocessing workers and the ``multiprocessing.Manager`` server behind their queues (a fork of the
main process, ~700 MB) were left running with PPID 1. :func:`ending_child_processes` ends every
``multiprocessing`` child on SIGTERM or Ctrl-C, then raises in the main thread, so the stack unwinds (threads
finish the file they are writing, which is renamed into place or not at all). Commands run with ``subprocess``
are started in their own process group and ended as a group by :func:`end_process_group` (their workers would
otherwise outlive them: ``nnUNetv2_train``'s data augmentation processes).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator

GRACE_S = 5.0


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised in the main thread, handled like Ctrl-C)."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def ending_child_processes(grace_s: float = GRACE_S) -> Iterator[None]:
    """Within this block SIGTERM raises :class:`Terminated`; on it or on Ctrl-C, end all child processes,
    print ``interrupted by SIG...`` and exit with 128 + the signal number.

    Only in the main thread (Python delivers signals there); elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main_pid = os.getpid()

    def on_signal(signum, frame):
        if os.getpid() != main_pid:  # a forked child (nnU-Net's Manager, a fork Pool) inherited this handler
            os._exit(128 + signum)
        for s in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        # before the stack unwinds: unwinding releases the Manager's shared objects, and a worker still running
        # would print a RemoteError traceback on its next abort_event.is_set()
        end_multiprocessing_children(grace_s)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, on_signal)
    if previous[signal.SIGINT] is not signal.SIG_IGN:  # started in the background (cmd &): Ctrl-C stays ignored
        signal.signal(signal.SIGINT, on_signal)
    try:
        yield
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        end_multiprocessing_children(grace_s)
        print(f"interrupted by {signal.Signals(signum).name}.", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def end_multiprocessing_children(grace_s: float = GRACE_S) -> None:
    """SIGTERM every live ``multiprocessing`` child of this process; SIGKILL those still alive after ``grace_s``."""
    children = multiprocessing.active_children()
    for child in children:
        with contextlib.suppress(Exception):
            child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join(1.0)


def end_process_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """End ``proc`` (started with ``start_new_session=True``) and every process of its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent are still in its group
    proc.wait()
