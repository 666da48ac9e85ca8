"""Optimiser steps that skip non-finite updates on the device, and a one-step-late host check.

A plain ``if not torch.isfinite(loss)`` makes the host wait for every step, so it cannot queue the
next one while the GPU works. Here the skip decision stays a device tensor: fused Adam takes it as
``found_inf`` (the protocol ``torch.amp.GradScaler`` uses) and leaves weights, moments and step count
untouched; the EMA takes it as well. The host reads each step's flag one step later, when the
device has long finished it, to log skipped steps and stop a run that keeps producing them.
"""
from __future__ import annotations

from typing import Callable

import torch

from nnunet_pdddpm.errors import PDDDPMUserError


def make_adam(params, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one launch for all parameters) where the device has one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:  # a device without fused Adam
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    # decided per step: loading an optimizer state_dict also loads its groups' "fused" flag
    return all(group.get("fused") for group in optimizer.param_groups)


def step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """``optimizer.step()`` unless the 0-dim bool tensor ``skip`` is true; no host sync for fused optimisers."""
    if is_fused(optimizer):
        optimizer.found_inf = skip.to(torch.float32)
        optimizer.step()
    else:
        optimizer.__dict__.pop("found_inf", None)
        if not bool(skip):  # host sync; only optimisers without a fused kernel
            optimizer.step()


class NonFiniteMonitor:
    """Counts consecutive skipped steps from flags read one step late; raises after ``limit()`` in a row.

    ``limit`` is a callable so that a trainer attribute changed after construction still applies.
    """

    def __init__(self, limit: Callable[[], int], log: Callable[[str], None]):
        self.limit = limit
        self.log = log
        self.in_a_row = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def record(self, skipped: torch.Tensor, loss: torch.Tensor) -> None:
        """Keep this step's flag; account for the previous one (finished by now, so reading it is cheap)."""
        self.flush()
        self._pending = (skipped.detach(), loss.detach())

    def flush(self) -> None:
        """Account for the last recorded step (end of an epoch)."""
        previous, self._pending = self._pending, None
        if previous is not None:
            self._account(*previous)

    def _account(self, skipped: torch.Tensor, loss: torch.Tensor) -> None:
        if not bool(skipped):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.log(f"WARNING: non-finite loss or gradient (loss {loss.item()}); step skipped "
                 f"({self.in_a_row} in a row).")
        if self.in_a_row >= self.limit():
            raise PDDDPMUserError(
                f"Training stopped: the loss was non-finite in {self.in_a_row} consecutive steps; check the input "
                f"images for NaN/inf voxels or lower the learning rate."
            )
