"""Short runs, in nnU-Net's variant style: each class changes a few attributes and nothing else.

``_tiny`` variants are for tests and quick checks on a CPU (a few iterations, a narrow denoiser,
short validation sampling); ``_demoCPU`` variants train the CPU profile of ``nnunet_pdddpm_demo``
(minutes on two cores, narrow networks); ``_demoGPU`` variants its GPU profile (the paper's
sampling settings, a few hours of training); ``_w128`` is the paper's denoiser width; ``_4draws``
trains each augmented image at four noise draws. The training options for the PD-DDPM regime, each
alone: ``_x0`` and ``_v`` (the network predicts the clean mask or the velocity instead of the paper's
noise), ``_tmax`` (timesteps drawn below 500 instead of 1000: inference from T'=300 never goes higher),
and ``_aware``, all three for PD-DDPM: x0 target, t < 500, and half of the samples diffused from a mask
with simulated pre-segmenter errors (``pre_segmentation_errors.py``). ``_seg`` reads the output as class logits
fitted with nnU-Net's Dice + CE; ``_preseg`` and ``_oof`` add the pre-segmenter's own predictions of the training
patches (its fold, or the fold that held each case out; ``training_pre_segmenter.py``). ``nnUNetTrainer_demoCPU``
and ``_long`` are plain nnU-Net at the demo's segmenter budget and at PD-DDPM's total budget: the yardsticks.

The same option exists for several regimes (the paper's, ``_tiny``, ``_demoCPU``), so each option is one mixin
below (``_PredictsX0``, ``_SimulatedErrors``, ...) and a variant names its regime and its options as bases; only
the timestep range, which is the regime's, is set in the variant itself. The run length, learning rate and
foreground oversampling are instance attributes that ``nnUNetTrainer.__init__`` sets; a variant states them in
``init_settings`` (:class:`_InitSettings`) instead of repeating an ``__init__``.

``mixins.py`` holds the options, ``tests.py`` the tiny variants, ``paper.py`` the paper's regime and
``demo.py`` the demos' and the refiner benchmark's trainers.
"""
from nnunet_pdddpm.trainers.variants.demo import (
    PDDDPMAttUNetTrainer_demoCPU,
    PDDDPMAttUNetTrainer_demoGPU,
    PDDDPMTrainer_demoCPU,
    PDDDPMTrainer_demoCPU_aware,
    PDDDPMTrainer_demoCPU_oof,
    PDDDPMTrainer_demoCPU_preseg,
    PDDDPMTrainer_demoCPU_refiner,
    PDDDPMTrainer_demoCPU_refiner_tta,
    PDDDPMTrainer_demoCPU_seg,
    PDDDPMTrainer_demoCPU_segaware,
    PDDDPMTrainer_demoCPU_x0,
    PDDDPMTrainer_demoGPU,
    PDDDPMTrainer_refinerCPU,
    PDDDPMTrainer_refinerCPU_paper,
    PDDDPMTrainer_refinerCPU_poly,
    PDDDPMTrainer_refinerCPU_tta,
    PDDDPMTrainer_refinerCPU_x3,
    nnUNetTrainer_demoCPU,
    nnUNetTrainer_demoCPU_long,
    nnUNetTrainer_refinerCPU,
    nnUNetTrainer_refinerCPU_more,
    nnUNetTrainer_refinerCPU_more_poly,
    nnUNetTrainer_refinerCPU_more_x3,
)
from nnunet_pdddpm.trainers.variants.paper import (
    PDDDPMTrainer_4draws,
    PDDDPMTrainer_attn16,
    PDDDPMTrainer_aware,
    PDDDPMTrainer_oof,
    PDDDPMTrainer_preseg,
    PDDDPMTrainer_refiner,
    PDDDPMTrainer_seg,
    PDDDPMTrainer_tmax,
    PDDDPMTrainer_v,
    PDDDPMTrainer_w128,
    PDDDPMTrainer_x0,
)
from nnunet_pdddpm.trainers.variants.tests import (
    PDDDPMAttUNetTrainer_tiny,
    PDDDPMTrainer_tiny,
    PDDDPMTrainer_tiny_preseg,
    PDDDPMTrainer_tiny_refiner,
    PDDDPMTrainer_tiny_refinerDemo,
    nnUNetTrainer_tiny,
    nnUNetTrainer_tiny_more,
)

__all__ = [
    "PDDDPMAttUNetTrainer_demoCPU",
    "PDDDPMAttUNetTrainer_demoGPU",
    "PDDDPMAttUNetTrainer_tiny",
    "PDDDPMTrainer_4draws",
    "PDDDPMTrainer_attn16",
    "PDDDPMTrainer_aware",
    "PDDDPMTrainer_demoCPU",
    "PDDDPMTrainer_demoCPU_aware",
    "PDDDPMTrainer_demoCPU_oof",
    "PDDDPMTrainer_demoCPU_preseg",
    "PDDDPMTrainer_demoCPU_refiner",
    "PDDDPMTrainer_demoCPU_refiner_tta",
    "PDDDPMTrainer_demoCPU_seg",
    "PDDDPMTrainer_demoCPU_segaware",
    "PDDDPMTrainer_demoCPU_x0",
    "PDDDPMTrainer_demoGPU",
    "PDDDPMTrainer_oof",
    "PDDDPMTrainer_preseg",
    "PDDDPMTrainer_refiner",
    "PDDDPMTrainer_refinerCPU",
    "PDDDPMTrainer_refinerCPU_paper",
    "PDDDPMTrainer_refinerCPU_poly",
    "PDDDPMTrainer_refinerCPU_tta",
    "PDDDPMTrainer_refinerCPU_x3",
    "PDDDPMTrainer_seg",
    "PDDDPMTrainer_tiny",
    "PDDDPMTrainer_tiny_preseg",
    "PDDDPMTrainer_tiny_refiner",
    "PDDDPMTrainer_tiny_refinerDemo",
    "PDDDPMTrainer_tmax",
    "PDDDPMTrainer_v",
    "PDDDPMTrainer_w128",
    "PDDDPMTrainer_x0",
    "nnUNetTrainer_demoCPU",
    "nnUNetTrainer_demoCPU_long",
    "nnUNetTrainer_refinerCPU",
    "nnUNetTrainer_refinerCPU_more",
    "nnUNetTrainer_refinerCPU_more_poly",
    "nnUNetTrainer_refinerCPU_more_x3",
    "nnUNetTrainer_tiny",
    "nnUNetTrainer_tiny_more",
]
