"""Seeded training for nnU-Net trainers: the same seed, the same run (on the same machine and thread count).

nnU-Net does not seed training: weights are initialised from the process's random state and every data
augmentation worker seeds itself from the operating system (``NonDetMultiThreadedAugmenter(seeds=None)``).
With ``nnunet_pdddpm_seed=N`` in the environment (``nnunet_pdddpm_demo -seed`` and the fidelity benchmark
set it), :class:`SeededTrainingMixin` seeds Python, NumPy and PyTorch before the network is built and
restarts the augmentation workers with seeds derived from N. With one worker (what the demo uses on two
cores) the batches are then reproducible; with several, their interleaving still is not (nnU-Net's
"NonDet" augmenter).
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

from nnunet_pdddpm.errors import PDDDPMUserError

SEED_VARIABLE = "nnunet_pdddpm_seed"


def training_seed() -> int | None:
    """The seed from ``nnunet_pdddpm_seed``, or None when it is unset or empty."""
    value = os.environ.get(SEED_VARIABLE, "").strip()
    if not value:
        return None
    try:
        seed = int(value)
    except ValueError:
        raise PDDDPMUserError(f"{SEED_VARIABLE} must be a whole number, got {value!r}.") from None
    if not 0 <= seed < 2 ** 31:
        raise PDDDPMUserError(f"{SEED_VARIABLE} must lie in [0, 2**31), got {seed}.")
    return seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reseed_augmenter(augmenter, seed: int) -> None:
    """Restart an nnU-Net augmenter's workers with seeds ``seed, seed + 1, ...`` (no-op for a single-threaded
    one, which uses the already seeded main process)."""
    if not isinstance(augmenter, NonDetMultiThreadedAugmenter):
        return
    augmenter._finish()
    augmenter.seeds = [seed + i for i in range(augmenter.num_processes)]
    next(augmenter)  # nnU-Net starts its augmenters inside get_dataloaders; keep that


class SeededTrainingMixin:
    """Put first in the bases of an ``nnUNetTrainer`` subclass to honour ``nnunet_pdddpm_seed``."""

    def initialize(self) -> None:
        seed = training_seed()
        if seed is not None:
            seed_everything(seed + self.fold)
            self.print_to_log_file(f"Seeded training: {SEED_VARIABLE}={seed} (fold {self.fold})")
        super().initialize()

    def get_dataloaders(self):
        train, val = super().get_dataloaders()
        seed = training_seed()
        if seed is not None:
            base = 1000 * (seed + self.fold)
            reseed_augmenter(train, base + 1)
            reseed_augmenter(val, base + 500)
        return train, val
