"""nnU-Net trainers of PD-DDPM: the denoiser (``PDDDPMTrainer``, the refiner; ``PDDDPMTrainer_paper``, the paper's
recipe), the attention U-Net pre-segmenter, and the short variants of ``variants/``.

``__all__`` is the public API; ``TRAINER_NAMES`` is every class nnU-Net can find by name (``-tr``), the variants
for tests, demos and benchmarks included (``nnunet_ext/`` exports exactly these).
"""
from nnunet_pdddpm.trainers import variants
from nnunet_pdddpm.trainers.attunet_trainer import PDDDPMAttUNetTrainer
from nnunet_pdddpm.trainers.pdddpm_trainer import PDDDPMTrainer_paper
from nnunet_pdddpm.trainers.refiner import PDDDPMTrainer

__all__ = ["PDDDPMAttUNetTrainer", "PDDDPMTrainer", "PDDDPMTrainer_paper"]
TRAINER_NAMES: tuple[str, ...] = (*__all__, *variants.__all__)


def __getattr__(name: str):
    """The variants by name (``nnunet_pdddpm.trainers.PDDDPMTrainer_tiny``), without making them public API."""
    if name in variants.__all__:
        return getattr(variants, name)
    raise AttributeError(f"module 'nnunet_pdddpm.trainers' has no attribute {name!r}")
