"""nnU-Net's checkpoint, written as plain data and read back without running code.

``nnUNetTrainer.save_checkpoint`` pickles numpy scalars (the logger's Dice values) in place and
``load_checkpoint`` unpickles with ``weights_only=False`` (and fails when given a dict, in 2.8.1).
:class:`SafeCheckpointMixin` keeps nnU-Net's keys and meaning, so nnU-Net's tools still read the files,
but writes them through :func:`save_checkpoint_atomic` (they load with ``torch.load(weights_only=True)``
and no allow-list) and resumes through :func:`load_nnunet_checkpoint` (older files with numpy scalars too).
A trainer with more to store (``PDDDPMTrainer``: EMA weights and its settings) extends
:meth:`SafeCheckpointMixin.checkpoint_contents` and :meth:`SafeCheckpointMixin.load_checkpoint`.
"""
from __future__ import annotations

import os

from torch import nn
from torch._dynamo import OptimizedModule

from nnunet_pdddpm.checkpoints import load_nnunet_checkpoint, save_checkpoint_atomic, trust_checkpoints_from_env


def nnunet_checkpoint(trainer, network: nn.Module) -> dict:
    """The keys and values ``nnUNetTrainer.save_checkpoint`` writes, for ``network`` (without a compile wrapper).

    Re-typed from nnU-Net 2.8.1, which builds this dict inside ``save_checkpoint`` and ``torch.save``s it in the
    same breath: there is no call that returns it without writing a file that needs ``weights_only=False``.
    """
    return {
        "network_weights": network.state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": trainer.grad_scaler.state_dict() if trainer.grad_scaler is not None else None,
        "logging": trainer.logger.get_checkpoint(),
        "_best_ema": trainer._best_ema,
        "current_epoch": trainer.current_epoch + 1,
        "init_args": trainer.my_init_kwargs,
        "trainer_name": trainer.__class__.__name__,
        "inference_allowed_mirroring_axes": trainer.inference_allowed_mirroring_axes,
    }


class SafeCheckpointMixin:
    """Put before ``nnUNetTrainer`` in the bases of a trainer whose checkpoints should be plain data."""

    def checkpoint_contents(self) -> dict:
        """What :meth:`save_checkpoint` writes: nnU-Net's keys; a trainer with more to store adds its own."""
        return nnunet_checkpoint(self, self._bare_network())

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        save_checkpoint_atomic(self.checkpoint_contents(), filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """Resume as nnU-Net does (``nnUNetv2_train --c``), from a file or an already loaded dict.

        The body is ``nnUNetTrainer.load_checkpoint`` after its ``torch.load``, re-typed because nnU-Net's cannot be
        called: given a file it unpickles with ``weights_only=False`` (runs whatever the file names), and given a
        dict (2.8.1) it fails, its ``checkpoint`` variable being bound only in the file branch.
        """
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, (str, os.PathLike)):
            checkpoint = load_nnunet_checkpoint(checkpoint, map_location=self.device,
                                                trust_checkpoints=trust_checkpoints_from_env())
        network = self._bare_network()
        own = network.state_dict().keys()
        network.load_state_dict({k[7:] if k not in own and k.startswith("module.") else k: v
                                 for k, v in checkpoint["network_weights"].items()})
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])

    def _bare_network(self) -> nn.Module:
        """The network without DDP and ``torch.compile`` wrappers (whose state-dict keys differ)."""
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod
