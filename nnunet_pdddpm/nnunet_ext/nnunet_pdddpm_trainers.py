"""Shim scanned by nnU-Net through ``nnUNet_extTrainer``: it re-exports the package's trainer classes.

nnU-Net imports every module of the folders listed in ``nnUNet_extTrainer`` and drops them from
``sys.modules`` afterwards; the classes it finds here are those of ``nnunet_pdddpm.trainers``, so
``isinstance`` and pickling see one class identity. Keep this folder free of other modules, and
this list equal to ``nnunet_pdddpm.trainers.__all__`` (a test checks it).
"""
from nnunet_pdddpm.trainers import (  # noqa: F401
    PDDDPMAttUNetTrainer,
    PDDDPMAttUNetTrainer_demoCPU,
    PDDDPMAttUNetTrainer_demoGPU,
    PDDDPMAttUNetTrainer_tiny,
    PDDDPMTrainer,
    PDDDPMTrainer_4draws,
    PDDDPMTrainer_attn16,
    PDDDPMTrainer_aware,
    PDDDPMTrainer_demoCPU,
    PDDDPMTrainer_demoCPU_aware,
    PDDDPMTrainer_demoCPU_oof,
    PDDDPMTrainer_demoCPU_preseg,
    PDDDPMTrainer_demoCPU_presegNN,
    PDDDPMTrainer_demoCPU_seg,
    PDDDPMTrainer_demoCPU_segaware,
    PDDDPMTrainer_demoCPU_tmax,
    PDDDPMTrainer_demoCPU_v,
    PDDDPMTrainer_demoCPU_x0,
    PDDDPMTrainer_demoGPU,
    PDDDPMTrainer_oof,
    PDDDPMTrainer_preseg,
    PDDDPMTrainer_seg,
    PDDDPMTrainer_tiny,
    PDDDPMTrainer_tiny_aware,
    PDDDPMTrainer_tiny_preseg,
    PDDDPMTrainer_tmax,
    PDDDPMTrainer_v,
    PDDDPMTrainer_w128,
    PDDDPMTrainer_x0,
    nnUNetTrainer_demoCPU,
    nnUNetTrainer_demoCPU_long,
)
