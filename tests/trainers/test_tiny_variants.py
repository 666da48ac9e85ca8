"""The tiny test trainers' thread pools: only nnU-Net's ``spawn`` pools become threads, only during validation."""
import multiprocessing
import threading
from multiprocessing.pool import ThreadPool

import pytest

from nnunet_pdddpm.trainers.variants.tests import _spawn_pools_as_threads


def _thread_name(_: int) -> str:
    return threading.current_thread().name


def test_spawn_pools_run_in_threads_of_this_process_and_the_patch_is_undone():
    original = multiprocessing.get_context
    with _spawn_pools_as_threads():
        spawn = multiprocessing.get_context("spawn")
        assert spawn.Pool is ThreadPool
        assert spawn.get_start_method() == "spawn"  # the rest is the real spawn context
        assert multiprocessing.get_context("fork").Pool is not ThreadPool
        with spawn.Pool(2) as pool:
            names = pool.map(_thread_name, range(4))
        assert all(name != threading.main_thread().name for name in names)
    assert multiprocessing.get_context is original
    with pytest.raises(RuntimeError), _spawn_pools_as_threads():
        raise RuntimeError("validation failed")
    assert multiprocessing.get_context is original  # undone when validation raises, too
