"""Exponential moving average of the denoiser's weights (used for validation and inference)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow``, a frozen copy of ``model`` whose weights follow an EMA with warm-up.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as in diffusers'
    ``EMAModel``), so short runs are not stuck at the initial weights. Buffers are copied as is.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = list(self.shadow.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - d)
        for b_ema, b in zip(self.shadow.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"weights": self.shadow.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["weights"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
