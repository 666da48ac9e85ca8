"""Exponential moving average of the denoiser's weights (used for validation and inference)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow``, a frozen copy of ``model`` whose weights follow an EMA with warm-up.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as in diffusers'
    ``EMAModel``), so short runs are not stuck at the initial weights. Buffers are copied as is.
    The update count lives on the device so that an update can be skipped by a device-side flag
    (a non-finite training step) without the host waiting for the step to finish.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        device = next(self.shadow.parameters()).device
        self._count = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def num_updates(self) -> int:
        return int(self._count)

    def current_decay(self) -> torch.Tensor:
        n = self._count.to(torch.float32)
        return torch.clamp((1 + n) / (10 + n), max=self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None) -> None:
        """Move the shadow towards ``model``; a true 0-dim ``skip`` tensor leaves everything as it was."""
        weight = 1 - self.current_decay()
        if skip is not None:
            weight = weight * ~skip
        ema_params = list(self.shadow.parameters())
        delta = torch._foreach_sub([p.detach() for p in model.parameters()], ema_params)
        torch._foreach_mul_(delta, weight)
        torch._foreach_add_(ema_params, delta)  # = lerp(ema, p, weight)
        for b_ema, b in zip(self.shadow.buffers(), model.buffers()):
            b_ema.copy_(b if skip is None else torch.where(skip, b_ema, b))
        self._count += 1 if skip is None else (~skip).to(torch.int64)

    def state_dict(self) -> dict:
        return {"weights": self.shadow.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["weights"])
        self._count.fill_(int(state["num_updates"]))
        self.decay = float(state["decay"])
