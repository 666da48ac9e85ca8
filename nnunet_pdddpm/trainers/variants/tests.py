"""Tiny variants for tests and quick checks on a CPU: a few iterations, a narrow denoiser, short
validation sampling.
"""
from __future__ import annotations

import multiprocessing
from contextlib import contextmanager
from multiprocessing.pool import ThreadPool
from typing import Any, Iterator

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_pdddpm.trainers.attunet_trainer import PDDDPMAttUNetTrainer
from nnunet_pdddpm.trainers.pdddpm_trainer import PDDDPMTrainer_paper
from nnunet_pdddpm.trainers.refiner import RefinerRecipe
from nnunet_pdddpm.trainers.seeding import SeededTrainingMixin
from nnunet_pdddpm.trainers.variants.mixins import (
    _ContinuesPreSegmenter,
    _InitSettings,
    _NarrowNetwork,
    _PreSegmenterErrors,
    _SegmentationOutput,
)

_TINY_RUN = {"num_epochs": 2, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 2}


class _ThreadsForSpawn:
    """A multiprocessing context whose ``Pool`` is a thread pool; everything else is the real spawn context's."""

    def __init__(self, context: Any):
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return ThreadPool if name == "Pool" else getattr(self._context, name)


@contextmanager
def _spawn_pools_as_threads() -> Iterator[None]:
    original = multiprocessing.get_context

    def get_context(method: str | None = None) -> Any:
        context = original(method)
        return _ThreadsForSpawn(context) if method == "spawn" else context

    multiprocessing.get_context = get_context
    try:
        yield
    finally:
        multiprocessing.get_context = original


class _ValidationPoolsInThreads:
    """nnU-Net's own final validation, with its two ``spawn`` pools (export, then metrics) as thread pools.

    A spawned worker re-imports the whole training stack before it exports anything (8-20 s each on a 2-core
    machine), which is most of a tiny run's wall time; the validation code, its files and its metrics are
    nnU-Net's unchanged. Tiny segmenters only: the full-size trainers keep nnU-Net's processes.
    """

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        with _spawn_pools_as_threads():
            super().perform_actual_validation(save_probabilities)


class PDDDPMTrainer_tiny(_ValidationPoolsInThreads, _InitSettings, PDDDPMTrainer_paper):
    base_features = 8
    max_features = 32
    t_prime = 20
    ensemble_size = 2
    sampler = "ddim"
    steps = 4
    t_prime_sweep = (5, 10, 20)
    pre_segmenter_trainers = ("PDDDPMAttUNetTrainer_tiny", "PDDDPMAttUNetTrainer", "nnUNetTrainer")
    init_settings = {**_TINY_RUN, "initial_lr": 1e-3}


class PDDDPMTrainer_tiny_preseg(_SegmentationOutput, _PreSegmenterErrors, PDDDPMTrainer_tiny):
    timestep_range = 40


class PDDDPMAttUNetTrainer_tiny(_ValidationPoolsInThreads, _InitSettings, PDDDPMAttUNetTrainer):
    init_settings = _TINY_RUN


class nnUNetTrainer_tiny(_ValidationPoolsInThreads, _NarrowNetwork, _InitSettings, SeededTrainingMixin, nnUNetTrainer):
    """Plain nnU-Net at the tiny denoiser's width (8-32), a few iterations: the refiner's starting point in tests."""

    base_features = 8
    max_features = 32
    init_settings = _TINY_RUN


class PDDDPMTrainer_tiny_refiner(RefinerRecipe, PDDDPMTrainer_tiny):
    pre_segmenter_trainers = ("nnUNetTrainer_tiny",)
    timestep_range = 20
    t_prime = 10
    t_prime_sweep = (5, 10, 20)


class PDDDPMTrainer_tiny_refinerDemo(PDDDPMTrainer_tiny_refiner):
    """The tiny demo's refiner: starts from fold 0's own predictions (one fold trained)."""

    pre_segmentation_source = "pre_segmenter"


class nnUNetTrainer_tiny_more(_ContinuesPreSegmenter, nnUNetTrainer_tiny):
    pre_segmenter_trainers = ("nnUNetTrainer_tiny",)
