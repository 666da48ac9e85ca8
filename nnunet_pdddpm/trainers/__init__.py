"""nnU-Net trainers of PD-DDPM: the denoiser, the attention U-Net pre-segmenter, and short variants."""
from nnunet_pdddpm.trainers.attunet_trainer import PDDDPMAttUNetTrainer
from nnunet_pdddpm.trainers.pdddpm_trainer import PDDDPMTrainer
from nnunet_pdddpm.trainers.variants import (
    PDDDPMAttUNetTrainer_demoCPU,
    PDDDPMAttUNetTrainer_demoGPU,
    PDDDPMAttUNetTrainer_tiny,
    PDDDPMTrainer_4draws,
    PDDDPMTrainer_demoCPU,
    PDDDPMTrainer_demoGPU,
    PDDDPMTrainer_tiny,
    PDDDPMTrainer_w128,
)

__all__ = [
    "PDDDPMAttUNetTrainer",
    "PDDDPMAttUNetTrainer_demoCPU",
    "PDDDPMAttUNetTrainer_demoGPU",
    "PDDDPMAttUNetTrainer_tiny",
    "PDDDPMTrainer",
    "PDDDPMTrainer_4draws",
    "PDDDPMTrainer_demoCPU",
    "PDDDPMTrainer_demoGPU",
    "PDDDPMTrainer_tiny",
    "PDDDPMTrainer_w128",
]
